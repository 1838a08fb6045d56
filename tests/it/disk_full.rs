//! A full disk under the tasks folder: a real tmpfs of a few pages, filled by a run's log. The
//! log must stay one JSON object per line, and take lines again once there is room.

use std::path::Path;
use std::process::Command;

use maxions::runner::{Event, EventLine, EventSink, JsonlLog};
use maxions::sandbox::OutputStream;

/// A tmpfs mounted on a temporary directory for the test's life.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` (said why) when this process may not mount one: it is not root.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Self(dir));
        }
        let root = rustix::process::geteuid().is_root();
        assert!(
            !root,
            "as root, mounting a tmpfs must work (the disk-full test needs one)"
        );
        eprintln!("SKIPPED disk_full: mounting a tmpfs needs root");
        None
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn line(seq: u64) -> EventLine {
    EventLine {
        ts: "2026-12-02T10:00:00.000Z".into(),
        run: "r".into(),
        seq,
        event: Event::Output {
            step: "fill".into(),
            stream: OutputStream::Stdout,
            text: format!("{seq:04} {}\n", "x".repeat(900)),
        },
    }
}

fn seqs(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).expect("the log");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the log ends mid-line"
    );
    text.lines()
        .map(|l| {
            let value: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a whole line ({e}): {l}"));
            value["seq"].as_u64().expect("seq")
        })
        .collect()
}

#[test]
fn a_full_disk_cuts_the_log_back_to_whole_lines_and_it_goes_on_once_there_is_room() {
    let Some(fs) = Tmpfs::mount("16k") else {
        return;
    };
    // Room to free later.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 8192]).expect("the filler");
    let log = JsonlLog::create(&fs.path().join("run.jsonl")).expect("the log");
    for seq in 1..=20 {
        log.emit(&line(seq));
    }
    let written = seqs(log.path());
    assert!(
        !written.is_empty() && written.len() < 20,
        "the disk should fill part way: {written:?}"
    );
    assert_eq!(written, (1..=written.len() as u64).collect::<Vec<_>>());

    std::fs::remove_file(&filler).expect("free room");
    log.emit(&line(21));
    let after = seqs(log.path());
    assert_eq!(after.last(), Some(&21), "{after:?}");
    assert_eq!(&after[..written.len()], &written[..]);
}
