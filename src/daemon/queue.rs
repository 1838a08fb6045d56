//! Which queued run starts next: first come, first served, except that a repository with fewer
//! runs going comes first, so one busy repository cannot starve the others; and a task never
//! runs twice at once.

use std::collections::HashMap;

use super::state::{Active, Entry};

/// The index in `queue` of the entry to start next, if one may start now (the caller checks
/// the concurrency limit).
#[must_use]
pub fn pick(queue: &[Entry], running: &[Active]) -> Option<usize> {
    pick_except(queue, running, &[])
}

/// [`pick`], passing over the entries whose ids are in `waiting` (those that wait for an
/// engine with a free slot).
#[must_use]
pub fn pick_except(queue: &[Entry], running: &[Active], waiting: &[String]) -> Option<usize> {
    let mut per_repo: HashMap<&str, usize> = HashMap::new();
    for active in running {
        *per_repo.entry(active.entry.repo.as_str()).or_default() += 1;
    }
    queue
        .iter()
        .enumerate()
        .filter(|(_, entry)| !running.iter().any(|a| a.entry.task == entry.task))
        .filter(|(_, entry)| !waiting.contains(&entry.id))
        .min_by_key(|(_, entry)| {
            (
                per_repo.get(entry.repo.as_str()).copied().unwrap_or(0),
                entry.seq,
            )
        })
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn entry(seq: u64, task: &str, repo: &str) -> Entry {
        Entry {
            id: String::new(),
            seq,
            task: task.into(),
            hash: String::new(),
            repo: repo.into(),
            trigger: String::new(),
            queued_at: Utc::now(),
            attempt: 1,
        }
    }

    fn start(entry: Entry) -> Active {
        Active {
            run: format!("run-{}", entry.seq),
            log: "x".into(),
            branch: "b".into(),
            started_at: Utc::now(),
            engine: String::new(),
            entry,
        }
    }

    /// Drives the queue to the end with `slots` runs at once, finishing the oldest running run
    /// whenever all slots are busy; returns the order runs started in.
    fn drain(mut queue: Vec<Entry>, slots: usize) -> Vec<String> {
        let mut running: Vec<Active> = Vec::new();
        let mut order = Vec::new();
        while !queue.is_empty() || !running.is_empty() {
            if running.len() < slots
                && let Some(i) = pick(&queue, &running)
            {
                let entry = queue.remove(i);
                order.push(entry.task.display().to_string());
                running.push(start(entry));
                continue;
            }
            assert!(running.len() <= slots);
            running.remove(0);
        }
        order
    }

    #[test]
    fn one_busy_repository_does_not_starve_another() {
        let mut queue: Vec<Entry> = (0..48)
            .map(|i| entry(i, &format!("a{i}"), "repo-a"))
            .collect();
        queue.push(entry(48, "b0", "repo-b"));
        queue.push(entry(49, "b1", "repo-b"));
        let order = drain(queue, 3);
        assert_eq!(order.len(), 50);
        // FIFO alone would start b0 as the 49th run; fairness starts it among the first few.
        let b0 = order.iter().position(|t| t == "b0").unwrap();
        let b1 = order.iter().position(|t| t == "b1").unwrap();
        assert!(b0 < 3, "{order:?}");
        assert!(b1 < 6, "{order:?}");
        // Within one repository the order stays first come, first served.
        let a: Vec<&String> = order.iter().filter(|t| t.starts_with('a')).collect();
        let mut sorted = a.clone();
        sorted.sort_by_key(|t| t[1..].parse::<u32>().unwrap());
        assert_eq!(a, sorted);
    }

    #[test]
    fn a_task_never_runs_twice_at_once() {
        let queue = vec![entry(0, "same", "r"), entry(1, "other", "r")];
        let running = vec![start(entry(9, "same", "r"))];
        assert_eq!(pick(&queue, &running), Some(1));
        assert_eq!(pick(&queue[..1], &running), None);
    }

    #[test]
    fn fifo_within_equal_load() {
        let queue = vec![
            entry(5, "x", "r1"),
            entry(3, "y", "r2"),
            entry(4, "z", "r1"),
        ];
        assert_eq!(pick(&queue, &[]), Some(1));
    }
}
