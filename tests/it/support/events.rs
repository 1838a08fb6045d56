//! An [`EventSink`] that keeps every event of a run, for tests to read back.

use std::sync::Mutex;

use maxions::runner::{EventLine, EventSink};

#[derive(Default)]
pub struct Events(Mutex<Vec<EventLine>>);

impl EventSink for Events {
    fn emit(&self, line: &EventLine) {
        self.0.lock().unwrap().push(line.clone());
    }
}

impl Events {
    pub fn snapshot(&self) -> Vec<EventLine> {
        self.0.lock().unwrap().clone()
    }

    /// Every event as its JSON line would read.
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.snapshot()
            .iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    /// The events of one `type`.
    pub fn of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.all()
            .into_iter()
            .filter(|v| v["type"] == kind)
            .collect()
    }
}
