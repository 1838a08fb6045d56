//! Cron schedules: a task's `schedule` and `timezone` as a value that says when it fires next,
//! and what the daemon should do for it at a given instant. Pure: the caller passes the clock in,
//! so that DST and missed-run behaviour are tested on fixed instants.

use std::time::Duration;

use chrono::{DateTime, LocalResult, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use crate::config::daemon::MissedRuns;
use crate::config::formats;

/// A slot this late is still fired as a live one, not a missed one: the daemon's timer wakes a
/// little after the slot, and a busy machine or a suspended VM makes it later.
pub const ON_TIME: Duration = Duration::from_secs(60);

/// Counting missed slots stops here: `* * * * *` after a year down is half a million slots,
/// each costing about a microsecond, and the count is only for the log. [`Due::missed`] is
/// then a lower bound.
pub const MISSED_COUNT_LIMIT: u64 = 10_000;

/// A task's cron expression read in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    tz: Tz,
    cron: croner::Cron,
    /// cron(8)'s "job that runs at a particular time" (no `*` in minute or hour) that croner
    /// treats as an interval job, because a field holds a list, a range or a step: see
    /// [`Schedule::next_after`].
    listed: bool,
}

impl Schedule {
    /// Parses a 5-field cron expression (or a nickname such as `@daily`) and an IANA time zone
    /// (default UTC). The errors are the words `maxions validate` uses for the same mistakes.
    pub fn new(expr: &str, timezone: Option<&str>) -> Result<Self, String> {
        let cron = formats::parse_cron(expr)?;
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => {
                formats::check("maxions-timezone", name).map_err(|problem| problem.message)?;
                name.parse::<Tz>().map_err(|error| error.to_string())?
            }
        };
        let listed = is_fixed_time(expr) && cron.determine_job_type() != croner::JobType::FixedTime;
        Ok(Self {
            expr: expr.to_owned(),
            tz,
            cron,
            listed,
        })
    }

    /// The expression as written.
    #[must_use]
    pub fn expr(&self) -> &str {
        &self.expr
    }

    #[must_use]
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first slot strictly after `after`, or `None` if the expression never matches again
    /// (croner's search is bounded: `0 0 30 2 *` gives `None`, `0 0 29 2 *` finds a leap year).
    ///
    /// The DST rule is cron(8)'s: a job that runs at a particular time (no `*` in minute or
    /// hour) whose time is skipped by a clock change runs at the first instant after the change
    /// (once, however many of its times were skipped); one whose time is repeated runs once, at
    /// the first of the two. A job with `*` in minute or hour (`*/15`, `@hourly`) follows the
    /// new wall clock: skipped times are skipped, repeated times run twice.
    ///
    /// croner applies that rule to jobs with a single minute and hour, and the wall-clock rule
    /// to all others, so a list, a range or a step without `*` (`0 1,2 * * *`, `0-59/30 2 * *
    /// *`) is corrected here, with croner still doing all matching: slots croner gives in the
    /// second half of a repeated interval are dropped, and a clock change that skips a time the
    /// pattern matches becomes a slot itself.
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.listed {
            return self.croner_next(after);
        }
        let mut from = after;
        loop {
            let candidate = self.croner_next(from);
            let horizon = candidate
                .or_else(|| from.checked_add_signed(TimeDelta::days(366)))
                .unwrap_or(from);
            if let Some(change) = self.skipping_change(from, horizon) {
                return Some(change);
            }
            let candidate = candidate?;
            if !self.is_repeat(candidate) {
                return Some(candidate);
            }
            from = candidate;
        }
    }

    fn croner_next(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(next.with_timezone(&Utc))
    }

    /// Whether `instant` is the second of two instants with the same wall clock time.
    fn is_repeat(&self, instant: DateTime<Utc>) -> bool {
        let wall = instant.with_timezone(&self.tz).naive_local();
        matches!(
            self.tz.from_local_datetime(&wall),
            LocalResult::Ambiguous(_, later) if later == instant
        )
    }

    /// The first clock change in `(after, until]` that skips a wall clock time the pattern
    /// matches: the instant of the change is when cron(8) runs such a job.
    fn skipping_change(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after;
        while let Some((change, before, then)) = self.next_change(from, until) {
            if then > before {
                let skipped_from = change.naive_utc() + TimeDelta::seconds(i64::from(before));
                let skipped_to = change.naive_utc() + TimeDelta::seconds(i64::from(then));
                // croner on a wall clock without a zone: the first matching time from there.
                let matched = self.cron.find_next_occurrence(&skipped_from, true).ok();
                if matched.is_some_and(|wall| wall < skipped_to) {
                    return Some(change);
                }
            }
            from = change;
        }
        None
    }

    /// The first instant in `(after, until]` where the zone's UTC offset changes, with the
    /// offsets (seconds east of UTC) before and from then on. Offsets are probed every few
    /// hours (no zone changes twice in that time) and the change is then found by bisection.
    fn next_change(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, i32, i32)> {
        const PROBE: TimeDelta = TimeDelta::hours(6);
        let before = self.offset(after);
        let mut low = after;
        while low < until {
            let high = (low + PROBE).min(until);
            if self.offset(high) != before {
                // The offset is `before` at `low` and differs at `high`: bisect to the second.
                let (mut low, mut high) = (low.timestamp(), high.timestamp());
                while high - low > 1 {
                    let mid = low + (high - low) / 2;
                    let at = DateTime::from_timestamp(mid, 0)?;
                    if self.offset(at) == before {
                        low = mid;
                    } else {
                        high = mid;
                    }
                }
                let change = DateTime::from_timestamp(high, 0)?;
                return Some((change, before, self.offset(change)));
            }
            low = high;
        }
        None
    }

    fn offset(&self, instant: DateTime<Utc>) -> i32 {
        self.tz
            .offset_from_utc_datetime(&instant.naive_utc())
            .fix()
            .local_minus_utc()
    }

    /// The next `count` slots after `from` (fewer if the expression stops matching).
    #[must_use]
    pub fn upcoming(&self, from: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(from), |&slot| self.next_after(slot))
            .take(count)
            .collect()
    }

    /// The slots in `(after, until]`, oldest first.
    fn slots_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(after), |&slot| self.next_after(slot))
            .take_while(move |&slot| slot <= until)
    }
}

/// cron(8): "Only jobs that run at a particular time (not specified as @hourly, nor with '*'
/// in the hour or minute specifier) are affected" by its DST rule. croner reads `?` as `*`.
fn is_fixed_time(expr: &str) -> bool {
    let expr = expr.trim();
    if expr.starts_with('@') {
        return !expr.eq_ignore_ascii_case("@hourly");
    }
    expr.split_whitespace()
        .take(2)
        .all(|field| !field.contains(['*', '?']))
}

/// What to do for one scheduled task at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The slot to run now, if any: the latest one in the window.
    pub fire: Option<DateTime<Utc>>,
    /// Slots in the window that do not run: passed while the daemon was down (or asleep), or
    /// squeezed out by a later slot. Saturates at [`MISSED_COUNT_LIMIT`].
    pub missed: u64,
    /// The first slot after the window: when to look again.
    pub next: Option<DateTime<Utc>>,
}

/// What to do for a scheduled task at `now`, given `last`: the instant up to which its slots
/// were handled (the `now` of the previous call that was acted on, or when the task was first
/// seen). The window is `(last, now]`:
/// - no slot in it: nothing fires;
/// - its latest slot is at most [`ON_TIME`] old: that slot fires (any earlier ones are missed);
/// - otherwise the slots passed while the daemon was down: `run_once` fires the latest of them
///   once (never a burst), `skip` fires nothing; either way they count as missed.
///
/// `next` is the first slot after both `now` and `last`, so that a clock stepped back does not
/// fire a slot a second time. After acting on the answer, the caller stores `now` as `last`.
#[must_use]
pub fn due(
    schedule: &Schedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: MissedRuns,
) -> Due {
    let next = schedule.next_after(now.max(last));
    let mut count = 0_u64;
    let mut latest = None;
    for slot in schedule.slots_between(last, now) {
        count += 1;
        latest = Some(slot);
        if count > MISSED_COUNT_LIMIT {
            latest = latest_slot(schedule, slot, now);
            break;
        }
    }
    let Some(latest) = latest else {
        return Due {
            fire: None,
            missed: 0,
            next,
        };
    };
    let on_time = now - latest <= TimeDelta::from_std(ON_TIME).unwrap_or(TimeDelta::MAX);
    let (fire, missed) = match (on_time, policy) {
        (true, _) | (false, MissedRuns::RunOnce) => (Some(latest), count - 1),
        (false, MissedRuns::Skip) => (None, count),
    };
    Due {
        fire,
        missed: missed.min(MISSED_COUNT_LIMIT),
        next,
    }
}

/// The latest slot in `(after, now]` without walking every slot in between: only the recent
/// end is walked, over a span that grows until it holds a slot.
fn latest_slot(
    schedule: &Schedule,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut span = TimeDelta::hours(1);
    loop {
        let from = now
            .checked_sub_signed(span)
            .map_or(after, |from| from.max(after));
        if let Some(slot) = schedule.slots_between(from, now).last() {
            return Some(slot);
        }
        if from == after {
            // The whole window was walked: `after` itself is the latest slot.
            return Some(after);
        }
        span = span.checked_mul(4).unwrap_or(TimeDelta::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test instant")
            .with_timezone(&Utc)
    }

    /// The next `count` slots after `from`, in the schedule's own offset.
    fn next(expr: &str, tz: &str, from: &str, count: usize) -> Vec<String> {
        let schedule = Schedule::new(expr, Some(tz)).expect("test schedule");
        schedule
            .upcoming(at(from), count)
            .into_iter()
            .map(|slot| slot.with_timezone(&schedule.timezone()).to_rfc3339())
            .collect()
    }

    #[test]
    fn berlin_spring_gap_runs_a_fixed_time_job_right_after_the_change() {
        // 2026-03-29 02:00 CET becomes 03:00 CEST: 02:30 does not exist.
        assert_eq!(
            next(
                "30 2 * * *",
                "Europe/Berlin",
                "2026-03-28T12:00:00+01:00",
                2
            ),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
        );
        let schedule = Schedule::new("30 2 * * *", Some("Europe/Berlin")).expect("valid");
        assert_eq!(
            schedule.next_after(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn berlin_fall_overlap_runs_a_fixed_time_job_once() {
        // 2026-10-25 03:00 CEST becomes 02:00 CET: 02:30 happens twice.
        assert_eq!(
            next(
                "30 2 * * *",
                "Europe/Berlin",
                "2026-10-24T12:00:00+02:00",
                2
            ),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // Seen from between the two 02:30s, the next one is the next day's.
        assert_eq!(
            next(
                "30 2 * * *",
                "Europe/Berlin",
                "2026-10-25T02:40:00+02:00",
                1
            ),
            ["2026-10-26T02:30:00+01:00"]
        );
    }

    #[test]
    fn wildcard_jobs_follow_the_wall_clock_across_the_berlin_gap() {
        assert_eq!(
            next(
                "*/15 * * * *",
                "Europe/Berlin",
                "2026-03-29T01:30:00+01:00",
                4
            ),
            [
                "2026-03-29T01:45:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:15:00+02:00",
                "2026-03-29T03:30:00+02:00",
            ]
        );
        assert_eq!(
            next(
                "30 * * * *",
                "Europe/Berlin",
                "2026-03-29T00:00:00+01:00",
                3
            ),
            [
                "2026-03-29T00:30:00+01:00",
                "2026-03-29T01:30:00+01:00",
                "2026-03-29T03:30:00+02:00",
            ]
        );
    }

    #[test]
    fn wildcard_jobs_run_twice_in_the_repeated_berlin_hour() {
        assert_eq!(
            next(
                "*/15 * * * *",
                "Europe/Berlin",
                "2026-10-25T01:50:00+02:00",
                9
            ),
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:15:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:45:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:15:00+01:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T02:45:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ]
        );
        assert_eq!(
            next(
                "30 * * * *",
                "Europe/Berlin",
                "2026-10-25T00:00:00+02:00",
                5
            ),
            [
                "2026-10-25T00:30:00+02:00",
                "2026-10-25T01:30:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T03:30:00+01:00",
            ]
        );
    }

    #[test]
    fn new_york_gap_and_overlap() {
        // 2026-03-08 02:00 EST becomes 03:00 EDT; 2026-11-01 02:00 EDT becomes 01:00 EST.
        assert_eq!(
            next(
                "30 2 * * *",
                "America/New_York",
                "2026-03-07T12:00:00-05:00",
                2
            ),
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
        );
        assert_eq!(
            next(
                "30 1 * * *",
                "America/New_York",
                "2026-10-31T12:00:00-04:00",
                2
            ),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
        // A wildcard-hour job runs at both 01:30s.
        assert_eq!(
            next(
                "30 * * * *",
                "America/New_York",
                "2026-11-01T00:00:00-04:00",
                4
            ),
            [
                "2026-11-01T00:30:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:30:00-05:00",
                "2026-11-01T02:30:00-05:00",
            ]
        );
        assert_eq!(
            next(
                "*/30 * * * *",
                "America/New_York",
                "2026-03-08T01:00:00-05:00",
                3
            ),
            [
                "2026-03-08T01:30:00-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-08T03:30:00-04:00",
            ]
        );
    }

    #[test]
    fn santiago_skips_midnight() {
        // Chile starts summer time at 24:00: 2026-09-06 00:00 -04 becomes 01:00 -03, so that
        // day has no midnight; a midnight job runs at 01:00.
        assert_eq!(
            next(
                "0 0 * * *",
                "America/Santiago",
                "2026-09-04T12:00:00-04:00",
                3
            ),
            [
                "2026-09-05T00:00:00-04:00",
                "2026-09-06T01:00:00-03:00",
                "2026-09-07T00:00:00-03:00",
            ]
        );
        assert_eq!(
            next(
                "0 * * * *",
                "America/Santiago",
                "2026-09-05T22:30:00-04:00",
                3
            ),
            [
                "2026-09-05T23:00:00-04:00",
                "2026-09-06T01:00:00-03:00",
                "2026-09-06T02:00:00-03:00",
            ]
        );
        // And ends it at 24:00: 2026-04-05 00:00 -03 becomes 2026-04-04 23:00 -04.
        assert_eq!(
            next(
                "30 23 * * *",
                "America/Santiago",
                "2026-04-04T12:00:00-03:00",
                2
            ),
            ["2026-04-04T23:30:00-03:00", "2026-04-05T23:30:00-04:00"]
        );
        assert_eq!(
            next(
                "0 * * * *",
                "America/Santiago",
                "2026-04-04T21:30:00-03:00",
                4
            ),
            [
                "2026-04-04T22:00:00-03:00",
                "2026-04-04T23:00:00-03:00",
                "2026-04-04T23:00:00-04:00",
                "2026-04-05T00:00:00-04:00",
            ]
        );
    }

    #[test]
    fn lord_howe_shifts_by_thirty_minutes() {
        // 2026-10-04 02:00 +10:30 becomes 02:30 +11:00; 2026-04-05 02:00 +11:00 becomes
        // 01:30 +10:30.
        assert_eq!(
            next(
                "15 2 * * *",
                "Australia/Lord_Howe",
                "2026-10-03T12:00:00+10:30",
                2
            ),
            ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]
        );
        assert_eq!(
            next(
                "*/15 * * * *",
                "Australia/Lord_Howe",
                "2026-10-04T01:40:00+10:30",
                3
            ),
            [
                "2026-10-04T01:45:00+10:30",
                "2026-10-04T02:30:00+11:00",
                "2026-10-04T02:45:00+11:00",
            ]
        );
        assert_eq!(
            next(
                "45 1 * * *",
                "Australia/Lord_Howe",
                "2026-04-04T12:00:00+11:00",
                2
            ),
            ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]
        );
        assert_eq!(
            next(
                "*/15 * * * *",
                "Australia/Lord_Howe",
                "2026-04-05T01:20:00+11:00",
                5
            ),
            [
                "2026-04-05T01:30:00+11:00",
                "2026-04-05T01:45:00+11:00",
                "2026-04-05T01:30:00+10:30",
                "2026-04-05T01:45:00+10:30",
                "2026-04-05T02:00:00+10:30",
            ]
        );
    }

    #[test]
    fn kolkata_is_five_and_a_half_hours_ahead_all_year() {
        assert_eq!(
            next("0 9 * * 1", "Asia/Kolkata", "2026-06-01T00:00:00Z", 2),
            ["2026-06-01T09:00:00+05:30", "2026-06-08T09:00:00+05:30"]
        );
        let schedule = Schedule::new("0 9 * * 1", Some("Asia/Kolkata")).expect("valid");
        assert_eq!(
            schedule.next_after(at("2026-06-01T00:00:00Z")),
            Some(at("2026-06-01T03:30:00Z"))
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: either matches (the 1st, or a Monday). 2026-06-01 is a Monday.
        assert_eq!(
            next("0 0 1 * 1", "UTC", "2026-06-01T00:00:00Z", 6),
            [
                "2026-06-08T00:00:00+00:00",
                "2026-06-15T00:00:00+00:00",
                "2026-06-22T00:00:00+00:00",
                "2026-06-29T00:00:00+00:00",
                "2026-07-01T00:00:00+00:00",
                "2026-07-06T00:00:00+00:00",
            ]
        );
        // One of them `*`: only the other counts.
        assert_eq!(
            next("0 0 * * 1", "UTC", "2026-06-28T00:00:00Z", 2),
            ["2026-06-29T00:00:00+00:00", "2026-07-06T00:00:00+00:00"]
        );
        assert_eq!(
            next("0 0 1 * *", "UTC", "2026-06-28T00:00:00Z", 2),
            ["2026-07-01T00:00:00+00:00", "2026-08-01T00:00:00+00:00"]
        );
    }

    #[test]
    fn the_29th_of_february_waits_for_a_leap_year() {
        assert_eq!(
            next("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]
        );
    }

    #[test]
    fn a_date_that_never_comes_has_no_next_slot() {
        let schedule = Schedule::new("0 0 30 2 *", None).expect("parses");
        assert_eq!(schedule.next_after(at("2026-01-01T00:00:00Z")), None);
        assert!(schedule.upcoming(at("2026-01-01T00:00:00Z"), 3).is_empty());
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(
            due(
                &schedule,
                now - TimeDelta::days(30),
                now,
                MissedRuns::RunOnce
            ),
            Due {
                fire: None,
                missed: 0,
                next: None
            }
        );
    }

    #[test]
    fn month_and_day_names() {
        // Sundays in July; 2026-07-05 is the first.
        assert_eq!(
            next("0 9 * jul SUN", "UTC", "2026-01-01T00:00:00Z", 3),
            [
                "2026-07-05T09:00:00+00:00",
                "2026-07-12T09:00:00+00:00",
                "2026-07-19T09:00:00+00:00",
            ]
        );
        assert_eq!(
            next("30 8 1 JAN-MAR *", "UTC", "2026-02-15T00:00:00Z", 3),
            [
                "2026-03-01T08:30:00+00:00",
                "2027-01-01T08:30:00+00:00",
                "2027-02-01T08:30:00+00:00",
            ]
        );
        assert_eq!(
            next("0 12 * * mon-fri", "UTC", "2026-06-05T13:00:00Z", 2),
            ["2026-06-08T12:00:00+00:00", "2026-06-09T12:00:00+00:00"]
        );
    }

    #[test]
    fn nicknames_are_read_in_the_time_zone() {
        assert_eq!(
            next("@daily", "Europe/Berlin", "2026-03-28T12:00:00+01:00", 2),
            ["2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"]
        );
        assert_eq!(
            next("@weekly", "UTC", "2026-06-01T00:00:00Z", 1),
            ["2026-06-07T00:00:00+00:00"]
        );
        assert_eq!(
            next("@hourly", "Europe/Berlin", "2026-03-29T01:30:00+01:00", 2),
            ["2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]
        );
    }

    #[test]
    fn a_listed_hour_in_the_gap_runs_right_after_the_change() {
        // No `*` in minute or hour: cron(8)'s rule for a particular time applies to each
        // listed time. croner alone skips 02:00 on 2026-03-29 and runs it twice on 2026-10-25.
        assert_eq!(
            next(
                "0 1,2 * * *",
                "Europe/Berlin",
                "2026-03-28T12:00:00+01:00",
                3
            ),
            [
                "2026-03-29T01:00:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T01:00:00+02:00",
            ]
        );
        assert_eq!(
            next(
                "0 1,2 * * *",
                "Europe/Berlin",
                "2026-10-24T12:00:00+02:00",
                4
            ),
            [
                "2026-10-25T01:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-26T01:00:00+01:00",
                "2026-10-26T02:00:00+01:00",
            ]
        );
        // Two listed times in the gap still make one run at the change.
        assert_eq!(
            next(
                "0,30 2 * * *",
                "Europe/Berlin",
                "2026-03-29T01:00:00+01:00",
                2
            ),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]
        );
        // A step without `*` is a list too.
        assert_eq!(
            next(
                "0-59/30 2 * * *",
                "Europe/Berlin",
                "2026-10-25T00:00:00+02:00",
                3
            ),
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:00:00+01:00",
            ]
        );
    }

    /// A job with lists in minute or hour is, under cron(8)'s rule, one fixed-time job per
    /// (minute, hour) pair, and croner is right on each of those: the union of theirs is the
    /// oracle, over two years of five zones.
    #[test]
    fn a_listed_job_runs_when_its_single_time_jobs_would() {
        let cases: [(&str, &[u32], &[u32], &str); 6] = [
            ("0 1,2 * * *", &[0], &[1, 2], "* * *"),
            ("30 0-3 * * *", &[30], &[0, 1, 2, 3], "* * *"),
            ("0,30 1-2 * * 0", &[0, 30], &[1, 2], "* * 0"),
            ("15 2,23 * * *", &[15], &[2, 23], "* * *"),
            ("0-59/20 1,2 * * *", &[0, 20, 40], &[1, 2], "* * *"),
            ("0,45 0,1 * * *", &[0, 45], &[0, 1], "* * *"),
        ];
        let zones = [
            "Europe/Berlin",
            "America/New_York",
            "America/Santiago",
            "Australia/Lord_Howe",
            "Australia/Sydney",
        ];
        let from = at("2025-12-01T00:00:00Z");
        let until = at("2027-12-31T00:00:00Z");
        for zone in zones {
            for (expr, minutes, hours, rest) in cases {
                let listed = Schedule::new(expr, Some(zone)).expect("valid");
                assert!(listed.listed, "{expr}");
                let got: Vec<_> = listed.slots_between(from, until).collect();
                let mut want = Vec::new();
                for minute in minutes {
                    for hour in hours {
                        let single = Schedule::new(&format!("{minute} {hour} {rest}"), Some(zone))
                            .expect("valid");
                        assert!(!single.listed);
                        want.extend(single.slots_between(from, until));
                    }
                }
                want.sort_unstable();
                want.dedup();
                assert_eq!(got, want, "{expr} in {zone}");
            }
        }
    }

    #[test]
    fn errors_use_the_words_of_validate() {
        let error = Schedule::new("0 9 * *", None).expect_err("four fields");
        assert_eq!(
            error,
            "invalid cron `0 9 * *`: expected 5 fields (minute hour day-of-month month day-of-week), found 4"
        );
        let error = Schedule::new("0 25 * * *", None).expect_err("hour 25");
        assert!(error.starts_with("invalid cron `0 25 * * *`: "), "{error}");
        let error = Schedule::new("0 9 * * *", Some("Europe/Berln")).expect_err("typo");
        assert_eq!(error, "unknown time zone `Europe/Berln`");
        let schedule = Schedule::new("0 9 * * *", None).expect("valid");
        assert_eq!(schedule.timezone(), Tz::UTC);
        assert_eq!(schedule.expr(), "0 9 * * *");
    }

    fn daily_nine() -> Schedule {
        Schedule::new("0 9 * * *", None).expect("valid")
    }

    #[test]
    fn due_fires_a_slot_that_just_passed() {
        let schedule = daily_nine();
        let want = Due {
            fire: Some(at("2026-06-01T09:00:00Z")),
            missed: 0,
            next: Some(at("2026-06-02T09:00:00Z")),
        };
        for now in [
            "2026-06-01T09:00:00Z",
            "2026-06-01T09:00:30Z",
            "2026-06-01T09:01:00Z",
        ] {
            for policy in [MissedRuns::RunOnce, MissedRuns::Skip] {
                let got = due(&schedule, at("2026-06-01T08:59:00Z"), at(now), policy);
                assert_eq!(got, want, "{now} {policy:?}");
            }
        }
    }

    #[test]
    fn due_fires_only_the_latest_of_several_live_slots() {
        let schedule = Schedule::new("*/5 * * * *", None).expect("valid");
        let got = due(
            &schedule,
            at("2026-06-01T08:52:00Z"),
            at("2026-06-01T09:00:10Z"),
            MissedRuns::Skip,
        );
        assert_eq!(
            got,
            Due {
                fire: Some(at("2026-06-01T09:00:00Z")),
                missed: 1,
                next: Some(at("2026-06-01T09:05:00Z")),
            }
        );
    }

    #[test]
    fn due_runs_missed_slots_once_with_run_once() {
        // Down from 08:00 on the 1st to noon on the 4th: four 09:00 slots passed.
        let got = due(
            &daily_nine(),
            at("2026-06-01T08:00:00Z"),
            at("2026-06-04T12:00:00Z"),
            MissedRuns::RunOnce,
        );
        assert_eq!(
            got,
            Due {
                fire: Some(at("2026-06-04T09:00:00Z")),
                missed: 3,
                next: Some(at("2026-06-05T09:00:00Z")),
            }
        );
    }

    #[test]
    fn due_skips_missed_slots_with_skip() {
        let got = due(
            &daily_nine(),
            at("2026-06-01T08:00:00Z"),
            at("2026-06-04T12:00:00Z"),
            MissedRuns::Skip,
        );
        assert_eq!(
            got,
            Due {
                fire: None,
                missed: 4,
                next: Some(at("2026-06-05T09:00:00Z")),
            }
        );
        // Just past ON_TIME counts as missed.
        let got = due(
            &daily_nine(),
            at("2026-06-01T08:59:00Z"),
            at("2026-06-01T09:01:01Z"),
            MissedRuns::Skip,
        );
        assert_eq!((got.fire, got.missed), (None, 1));
    }

    #[test]
    fn due_with_no_slot_in_the_window_fires_nothing() {
        let got = due(
            &daily_nine(),
            at("2026-06-01T09:00:00Z"),
            at("2026-06-01T18:00:00Z"),
            MissedRuns::RunOnce,
        );
        assert_eq!(
            got,
            Due {
                fire: None,
                missed: 0,
                next: Some(at("2026-06-02T09:00:00Z")),
            }
        );
    }

    #[test]
    fn a_clock_stepped_back_does_not_fire_a_slot_twice() {
        // The 09:00 slot was handled up to 09:30; the clock then says 08:50.
        let got = due(
            &daily_nine(),
            at("2026-06-01T09:30:00Z"),
            at("2026-06-01T08:50:00Z"),
            MissedRuns::RunOnce,
        );
        assert_eq!(
            got,
            Due {
                fire: None,
                missed: 0,
                next: Some(at("2026-06-02T09:00:00Z")),
            }
        );
    }

    #[test]
    fn due_counts_a_huge_window_only_up_to_the_limit() {
        let schedule = Schedule::new("* * * * *", None).expect("valid");
        let last = at("2025-01-01T00:00:00Z");
        let now = at("2026-06-01T12:34:56Z");
        let started = std::time::Instant::now();
        let got = due(&schedule, last, now, MissedRuns::RunOnce);
        let took = started.elapsed();
        assert_eq!(got.fire, Some(at("2026-06-01T12:34:00Z")));
        assert_eq!(got.missed, MISSED_COUNT_LIMIT);
        assert_eq!(got.next, Some(at("2026-06-01T12:35:00Z")));
        // The 12:34 slot is 56 s old, so it is a live one under either policy.
        let got = due(&schedule, last, now, MissedRuns::Skip);
        assert_eq!(
            (got.fire, got.missed),
            (Some(at("2026-06-01T12:34:00Z")), MISSED_COUNT_LIMIT)
        );
        eprintln!("a year of `* * * * *` took {took:?}");
        // Bounded work, not 740,000 slots (a debug build on a busy machine included).
        assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    }

    #[test]
    fn upcoming_lists_slots_in_order() {
        let schedule = Schedule::new("0 */6 * * *", Some("Europe/Berlin")).expect("valid");
        let slots = schedule.upcoming(at("2026-06-01T00:00:00Z"), 1000);
        assert_eq!(slots.len(), 1000);
        assert!(slots.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
