//! When to ask GitHub again. GitHub answers 500/502/503/504 when it has a bad moment, 429 or a
//! 403 "secondary rate limit" (with `Retry-After`) when it wants maxions to slow down, and a 403
//! with `x-ratelimit-remaining: 0` when the hourly budget is spent. The first two pass within
//! seconds, so a few attempts with backoff (or the wait GitHub asks for, up to a cap) turn them
//! into a working run; anything else, or a wait longer than the cap, is reported at once.
//!
//! octocrab's own `retry` feature is switched off: by default it retries 5xx and 429 three
//! times with no pause, ignores `Retry-After`, never retries a secondary rate limit, and resends
//! a `POST` that may already have opened a pull request.

use std::time::Duration;

/// How many times one request is sent at most (the first try included).
pub const MAX_ATTEMPTS: u32 = 4;
/// The longest wait maxions accepts from a `Retry-After` or a rate limit reset; a longer one
/// ends the attempt with a message that says how long GitHub asked for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The first backoff pause after a 5xx or a dropped connection; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// What an answer says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Success, or a failure that another try will not change (401, 404, 422, a bare 403).
    Final,
    /// A passing failure: try again after backoff, or after the wait GitHub named.
    Again(Option<Duration>),
    /// GitHub asks for a wait longer than [`MAX_WAIT`].
    TooLong(Duration),
}

/// What the headers and message of a failed answer with `status` say.
///
/// `retry_after` is the `Retry-After` header in seconds, `reset_in` the seconds until
/// `x-ratelimit-reset` when `x-ratelimit-remaining` is 0.
#[must_use]
pub fn verdict(
    status: u16,
    retry_after: Option<u64>,
    reset_in: Option<u64>,
    message: &str,
) -> Verdict {
    let named = retry_after.or(reset_in).map(Duration::from_secs);
    let limited = match status {
        500 | 502 | 503 | 504 => return Verdict::Again(named.filter(|wait| *wait <= MAX_WAIT)),
        429 => true,
        403 => {
            retry_after.is_some()
                || reset_in.is_some()
                || message
                    .to_ascii_lowercase()
                    .contains("secondary rate limit")
        }
        _ => false,
    };
    if !limited {
        return Verdict::Final;
    }
    match named {
        Some(wait) if wait > MAX_WAIT => Verdict::TooLong(wait),
        named => Verdict::Again(named),
    }
}

/// The pause before attempt `attempt + 1` (`attempt` counts from 1): the wait GitHub named, or
/// an exponential backoff.
#[must_use]
pub fn pause(attempt: u32, named: Option<Duration>) -> Duration {
    named.unwrap_or_else(|| FIRST_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_rate_limits_are_tried_again() {
        for status in [500, 502, 503, 504] {
            assert_eq!(verdict(status, None, None, ""), Verdict::Again(None));
        }
        assert_eq!(
            verdict(429, Some(1), None, ""),
            Verdict::Again(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            verdict(
                403,
                Some(2),
                None,
                "You have exceeded a secondary rate limit"
            ),
            Verdict::Again(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            verdict(403, None, None, "You have exceeded a secondary rate limit"),
            Verdict::Again(None)
        );
    }

    #[test]
    fn refusals_are_final_and_long_waits_are_not_sat_out() {
        for status in [400, 401, 404, 422] {
            assert_eq!(verdict(status, None, None, ""), Verdict::Final);
        }
        assert_eq!(
            verdict(403, None, None, "Resource not accessible by integration"),
            Verdict::Final
        );
        assert_eq!(
            verdict(403, None, Some(3000), "API rate limit exceeded"),
            Verdict::TooLong(Duration::from_secs(3000))
        );
        assert_eq!(
            verdict(429, Some(3600), None, ""),
            Verdict::TooLong(Duration::from_secs(3600))
        );
    }

    #[test]
    fn backoff_doubles() {
        assert_eq!(pause(1, None), Duration::from_millis(200));
        assert_eq!(pause(3, None), Duration::from_millis(800));
        assert_eq!(
            pause(2, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
    }
}
