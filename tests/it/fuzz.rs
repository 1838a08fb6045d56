//! Fuzz targets for the parts that read what others write: the config loader, shell-mode
//! templates, the streaming redactor and the daemon's log completion. (The proxy's request
//! parsing, the log readers of `maxions logs` and the API, and the API's request handling are
//! fuzzed beside their code, where their parsers are reachable.) Each is a `fuzz_*` test driven by
//! `src/fuzzing.rs`: short in `cargo test`, about a minute each in `scripts/fuzz.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use maxions::config::RepoRef;
use maxions::config::validate::Validator;
use maxions::daemon::records::{Ended, logged_end};
use maxions::runner::result::log_path;
use maxions::runner::{Event, EventLine, RunStatus};
use maxions::sandbox::redact::{MASK, Redactor};
use maxions::secret::Secret;
use maxions::template::{Context, Mode, RunInfo, Templates};
use proptest::prelude::*;

#[path = "../../src/fuzzing.rs"]
mod fuzzing;
use fuzzing::fuzz;

// ---- the config loader and validate ------------------------------------------------------------

/// The shipped project files and the validation corpus, each with the folder it belongs in.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let root = crate::support::root();
    let mut files = vec![(
        "maxions.yaml".to_owned(),
        std::fs::read(root.join("maxions.yaml")).unwrap(),
    )];
    for (dir, into) in [
        ("blueprints", "blueprints"),
        ("tasks", "tasks"),
        ("tests/corpus/blueprints", "blueprints"),
        ("tests/corpus/tasks", "tasks"),
        ("tests/corpus/misc", "blueprints"),
    ] {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .flatten()
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((
                format!("{into}/{name}"),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    files
}

/// Tokens that YAML, the schema or the templates give meaning to.
const TOKENS: &[&str] = &[
    "- ",
    ": ",
    "  ",
    "\t",
    "'",
    "\"",
    "\\",
    "{{ task }}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{% if x %}",
    "&a ",
    "*a",
    "<<: *a",
    "!!binary ",
    "!custom ",
    "? ",
    "|",
    ">-",
    "[",
    "]",
    "{",
    "}",
    ",",
    "---",
    "...",
    "#",
    "null",
    "~",
    "true",
    "1e999",
    "-0",
    "0x1F",
    "99999999999999999999",
    "steps:",
    "run: make",
    "id: a",
    "check: true",
    "fix:",
    "agent:",
    "timeout: 5x",
    "when: ",
    "schedule: '* * * *'",
    "blueprint: default",
    "repo: acme/app",
    "\u{feff}",
    "日本",
    "\r",
    "\0",
    "\u{85}",
    "\u{2028}",
];

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(prop::sample::Index),
    DuplicateLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    Indent(prop::sample::Index, usize),
    Dedent(prop::sample::Index),
    Insert(prop::sample::Index, &'static str),
    SetByte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<prop::sample::Index>;
    prop_oneof![
        1 => at().prop_map(Mutation::DeleteLine),
        1 => at().prop_map(Mutation::DuplicateLine),
        1 => (at(), at()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => (at(), 1usize..5).prop_map(|(a, n)| Mutation::Indent(a, n)),
        1 => at().prop_map(Mutation::Dedent),
        3 => (at(), prop::sample::select(TOKENS)).prop_map(|(a, t)| Mutation::Insert(a, t)),
        1 => (at(), any::<u8>()).prop_map(|(a, b)| Mutation::SetByte(a, b)),
        1 => at().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    match mutation {
        Mutation::DeleteLine(i) => {
            lines.remove(i.index(n));
        }
        Mutation::DuplicateLine(i) => {
            let line = lines[i.index(n)].clone();
            lines.insert(i.index(n), line);
        }
        Mutation::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        Mutation::Indent(i, by) => lines[i.index(n)]
            .splice(0..0, std::iter::repeat_n(b' ', *by))
            .for_each(drop),
        Mutation::Dedent(i) => {
            let line = &mut lines[i.index(n)];
            let spaces = line.iter().take_while(|&&b| b == b' ').count().min(2);
            line.drain(..spaces);
        }
        Mutation::Insert(i, token) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, token.bytes());
            return;
        }
        Mutation::SetByte(i, byte) => {
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] = *byte;
            }
            return;
        }
        Mutation::Truncate(i) => {
            bytes.truncate(i.index(bytes.len() + 1));
            return;
        }
    }
    *bytes = lines.join(&b'\n');
}

/// A file to validate: a seed mutated a few times, or arbitrary bytes or text.
fn config_case() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let count = seeds().len();
    prop_oneof![
        6 => (0..count, proptest::collection::vec(mutation(), 1..8)).prop_map(|(which, mutations)| {
            let mut bytes = seeds()[which].1.clone();
            for m in &mutations {
                mutate(&mut bytes, m);
            }
            (which, bytes)
        }),
        1 => (0..count, proptest::collection::vec(any::<u8>(), 0..200)),
        1 => (0..count, any::<String>().prop_map(String::into_bytes)),
    ]
}

/// Lines and columns are 1-based and inside the text they point into (one past the last
/// character of a line, or the line after the last, is where "unexpected end" is reported).
fn check_positions(
    validation: &maxions::config::validate::Validation,
) -> Result<(), TestCaseError> {
    for d in &validation.diagnostics {
        prop_assert!(!d.message.is_empty(), "{d:?}");
        prop_assert_eq!(d.line.is_some(), d.column.is_some(), "{:?}", d);
        let (Some(line), Some(column)) = (d.line, d.column) else {
            continue;
        };
        prop_assert!(line >= 1 && column >= 1, "{d:?}");
        // A file that is not UTF-8 has no source kept; its position is then 1:1.
        let lossy;
        let text = match validation.sources.get(&d.file) {
            Some(text) => text.as_ref(),
            None => {
                lossy = String::from_utf8_lossy(&std::fs::read(&d.file).unwrap()).into_owned();
                lossy.as_str()
            }
        };
        // YAML breaks lines at CR, NEL, LS and PS too, and the parser's positions count so;
        // maxions' own count breaks at `\n`. A position must be inside the text by one of them.
        let by_newline: Vec<&str> = text.split('\n').collect();
        let by_yaml: Vec<&str> = text
            .split("\r\n")
            .flat_map(|l| l.split(['\r', '\n', '\u{85}', '\u{2028}', '\u{2029}']))
            .collect();
        let inside =
            |lines: &[&str]| line <= lines.len() && column <= lines[line - 1].chars().count() + 1;
        // Known, not yet fixed: a template in a block scalar whose content starts with blank
        // lines is placed that many lines too low (see
        // `a_template_in_a_block_after_a_blank_line_is_placed_on_its_line`).
        let block_after_blank = by_newline
            .windows(2)
            .any(|w| w[0].trim_end().ends_with(['|', '>', '-', '+']) && w[1].trim().is_empty());
        prop_assert!(
            block_after_blank || inside(&by_newline) || inside(&by_yaml),
            "{:?} is outside {:?}",
            d,
            text
        );
    }
    Ok(())
}

#[test]
fn fuzz_config_files_get_located_diagnostics() {
    let seeds = seeds();
    fuzz("config", 200, config_case(), |(which, bytes)| {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in &seeds {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let path = dir.path().join(&seeds[which].0);
        std::fs::write(&path, &bytes).unwrap();
        let validation = Validator::new().validate_paths(&[path]);
        check_positions(&validation)
    });
}

// ---- shell-mode templates ----------------------------------------------------------------------

/// Pieces of values that would run `touch pwned` if they reached the shell unquoted, shell
/// punctuation, control characters, unicode, and the template markers.
const VALUE_PIECES: &[&str] = &[
    "$(touch pwned)",
    "`touch pwned`",
    "; touch pwned",
    "\ntouch pwned\n",
    "&& touch pwned",
    "| touch pwned",
    "'",
    "\"",
    "\\",
    "$",
    "${HOME}",
    "$HOME",
    "*",
    "?",
    "~",
    "#",
    "!",
    "-n",
    "--",
    " ",
    "\t",
    "\r",
    "\n",
    "\0",
    "EOF",
    "<<",
    ">",
    "(",
    ")",
    "{",
    "}",
    "{{ task }}",
    "{%",
    "\u{FDD0}",
    "\u{FDD1}",
    "\u{FDD2}",
    "\u{FDD3}",
    "é",
    "日本",
    "🎉",
    "\u{202e}",
    "\u{feff}",
    "\u{7f}",
    "\u{1b}[31m",
    "%s",
    "%n",
    "a",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::collection::vec(prop::sample::select(VALUE_PIECES), 0..10).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
}

fn context(task: &str, branch: &str, var: &str, output: &str) -> Context {
    Context {
        task: task.to_owned(),
        repo: (&RepoRef::parse("acme/app").unwrap()).into(),
        branch: branch.to_owned(),
        base: "main".to_owned(),
        vars: BTreeMap::from([(
            "title".to_owned(),
            serde_json::Value::String(var.to_owned()),
        )]),
        steps: BTreeMap::from([(
            "describe".to_owned(),
            BTreeMap::from([("message".to_owned(), output.to_owned())]),
        )]),
        run: RunInfo {
            id: "run-1".to_owned(),
            failed_checks: 0,
        },
        failed: None,
    }
}

/// What a value becomes as shell text: the markers maxions uses inside rendered text
/// (U+FDD0..U+FDD3) are dropped from values, and NUL, which no shell argument can hold, too.
fn as_printed(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, '\u{FDD0}'..='\u{FDD3}' | '\0'))
        .collect()
}

/// Scripts, each with the fields its output is made of.
const SCRIPTS: &[(&str, &[usize])] = &[
    ("printf '%s' {{ task }} > out", &[0]),
    ("printf '%s' {{ branch }} > out", &[1]),
    ("printf '%s' {{ vars.title }} > out", &[2]),
    ("printf '%s' {{ steps.describe.message }} > out", &[3]),
    ("x={{ task }}; printf '%s' \"$x\" > out", &[0]),
    ("printf '%s' {{ task }}{{ vars.title }} > out", &[0, 2]),
    (
        "printf '%s|' {{ branch }} {{ steps.describe.message }} > out",
        &[1, 3],
    ),
];

#[test]
fn fuzz_shell_templates_print_values_verbatim() {
    let templates = Templates::new();
    // Spawns a shell per case: 64 by default keeps `cargo test` short.
    fuzz(
        "shell_templates",
        64,
        (proptest::collection::vec(value(), 4), 0..SCRIPTS.len()),
        |(values, which)| {
            let (script, fields) = SCRIPTS[which];
            let ctx = context(&values[0], &values[1], &values[2], &values[3]);
            let rendered = match templates.render(script, Mode::Shell, &ctx) {
                Ok(rendered) => rendered,
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "{script:?} refused {values:?}: {e}"
                    )));
                }
            };
            let dir = tempfile::tempdir().unwrap();
            let output = Command::new("timeout")
                .args(["10", "/bin/sh", "-c", &rendered])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("timeout and /bin/sh run");
            prop_assert!(
                !dir.path().join("pwned").exists(),
                "{values:?} ran as code in {rendered:?}"
            );
            prop_assert!(
                output.status.success(),
                "{rendered:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let got = std::fs::read(dir.path().join("out")).unwrap();
            let expected = if which == 6 {
                fields
                    .iter()
                    .map(|&f| format!("{}|", as_printed(&values[f])))
                    .collect::<String>()
            } else {
                fields
                    .iter()
                    .map(|&f| as_printed(&values[f]))
                    .collect::<String>()
            };
            prop_assert_eq!(
                String::from_utf8_lossy(&got),
                expected,
                "rendered {:?}",
                rendered
            );
            Ok(())
        },
    );
}

// ---- the streaming redactor --------------------------------------------------------------------

/// The specification: every maximal run of bytes covered by a secret becomes `***`.
fn reference(values: &[String], input: &[u8]) -> Vec<u8> {
    let mut covered = vec![false; input.len()];
    for value in values {
        let value = value.as_bytes();
        for start in 0..input.len() {
            if input[start..].starts_with(value) {
                covered[start..start + value.len()].fill(true);
            }
        }
    }
    let mut out = Vec::new();
    for (i, &byte) in input.iter().enumerate() {
        if !covered[i] {
            out.push(byte);
        } else if i == 0 || !covered[i - 1] {
            out.extend_from_slice(MASK);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Secrets of any text (4 bytes or more), over an alphabet small enough that they overlap.
fn secret_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ab*\n é]{4,10}",
        any::<String>().prop_filter("a secret has 4 bytes or more", |s| s.len()
            >= Secret::MIN_LEN),
    ]
}

fn redact_case() -> impl Strategy<Value = (Vec<String>, Vec<u8>, Vec<usize>)> {
    (
        proptest::collection::vec(secret_value(), 1..6),
        proptest::collection::vec(
            (
                proptest::collection::vec(
                    prop_oneof![
                        prop::sample::select(b"ab*\n \xc3\xa9".to_vec()),
                        any::<u8>()
                    ],
                    0..10,
                ),
                any::<prop::sample::Index>(),
                any::<prop::sample::Index>(),
            ),
            0..10,
        ),
        proptest::collection::vec(1usize..32, 1..10),
    )
        .prop_map(|(values, pieces, chunks)| {
            let mut input = Vec::new();
            for (filler, pick, cut) in pieces {
                input.extend_from_slice(&filler);
                let value = pick.get(&values).as_bytes();
                // Sometimes only the start of a secret: a near miss that must pass through.
                let end = if cut.index(3) == 0 {
                    cut.index(value.len())
                } else {
                    value.len()
                };
                input.extend_from_slice(&value[..end]);
            }
            (values, input, chunks)
        })
}

#[test]
fn fuzz_redactor_streams_mask_every_secret_and_nothing_else() {
    fuzz(
        "redactor",
        1000,
        redact_case(),
        |(values, input, chunks)| {
            let secrets: Vec<Secret> = values
                .iter()
                .enumerate()
                .map(|(i, v)| Secret::new(format!("S{i}"), v.clone()).unwrap())
                .collect();
            let redactor = Redactor::new(&secrets).unwrap();
            let mut stream = redactor.stream();
            let mut out = Vec::new();
            let mut rest = input.as_slice();
            for size in chunks.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                stream.write(chunk, &mut out);
                rest = tail;
            }
            stream.finish(&mut out);
            let expected = reference(&values, &input);
            prop_assert_eq!(
                &out,
                &expected,
                "input {:?}",
                String::from_utf8_lossy(&input)
            );
            let one_shot = redactor.redact(&input);
            prop_assert_eq!(one_shot.as_ref(), expected.as_slice());
            // A secret with a `*` in it can be re-formed by the mask and the bytes around it (a
            // secret ` ***` in `  ***`): a known limit, reported rather than asserted here.
            for value in values.iter().filter(|v| !v.contains('*')) {
                prop_assert!(
                    !contains(&out, value.as_bytes()),
                    "secret {:?} in {:?}",
                    value,
                    String::from_utf8_lossy(&out)
                );
            }
            Ok(())
        },
    );
}

// ---- the daemon's completion of a log cut short -----------------------------------------------

fn log_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        3 => (0u64..1_000_000, prop_oneof![
            Just(r#""type":"run_started","task":"t","blueprint":"b","repo":"r","branch":"x","base":"main""#),
            Just(r#""type":"step_started","step":"s","kind":"run""#),
            Just(r#""type":"log","step":"s","stream":"stdout","text":"hi"}"#),
        ]).prop_map(|(seq, e)| format!(r#"{{"ts":"2026-12-02T10:00:00.000Z","run":"r","seq":{seq},{e}}}"#).into_bytes()),
        1 => Just(br#"{"seq":18446744073709551615}"#.to_vec()),
        1 => Just(br#"{"seq":-1,"type":"run_finished"}"#.to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ];
    (
        proptest::collection::vec(line, 0..10),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(lines, cut)| {
            let bytes = lines.join(&b'\n');
            let end = cut.index(bytes.len() + 1);
            bytes[..end].to_vec()
        })
}

fn ended(task: &Path) -> Ended<'_> {
    Ended {
        task,
        run: "20261202T100000-000001",
        repo: "acme/app",
        branch: "maxions/t",
        trigger: Some("fuzz"),
        started_at: chrono::Utc::now(),
        status: RunStatus::Interrupted,
        reason: "the daemon stopped".to_owned(),
    }
}

#[test]
fn fuzz_cut_logs_are_completed_with_a_later_seq() {
    fuzz("records", 200, log_bytes(), |before| {
        let dir = tempfile::tempdir().unwrap();
        let task: PathBuf = dir.path().join("t.yaml");
        std::fs::write(&task, "task: x\n").unwrap();
        let end = ended(&task);
        let log = log_path(&task, end.run);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, &before).unwrap();
        let before_seq = before
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("seq").and_then(serde_json::Value::as_u64))
            .max()
            .unwrap_or(0);
        if end.record().is_err() {
            // Only a log whose last seq is u64::MAX cannot be continued.
            prop_assert_eq!(before_seq, u64::MAX);
            return Ok(());
        }
        let after = std::fs::read(&log).unwrap();
        prop_assert!(after.starts_with(&before), "the log was rewritten");
        prop_assert!(after.ends_with(b"\n"));
        let mut added = &after[before.len()..];
        if !before.is_empty() && !before.ends_with(b"\n") {
            prop_assert_eq!(added.first(), Some(&b'\n'), "the cut line was not ended");
            added = &added[1..];
        }
        let lines: Vec<EventLine> = added
            .strip_suffix(b"\n")
            .unwrap_or(added)
            .split(|&b| b == b'\n')
            .map(|l| {
                serde_json::from_slice(l).map_err(|e| {
                    TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(l)))
                })
            })
            .collect::<Result<_, _>>()?;
        let mut seq = before_seq;
        for line in &lines {
            prop_assert!(line.seq > seq, "seq {} after {}", line.seq, seq);
            seq = line.seq;
        }
        let finished = matches!(
            lines.last().map(|l| &l.event),
            Some(Event::RunFinished { .. })
        );
        prop_assert!(finished, "the last line is not run_finished");
        let (status, reason, _) = logged_end(&task, end.run).expect("the log has ended");
        prop_assert_eq!(status, RunStatus::Interrupted);
        prop_assert_eq!(reason.as_deref(), Some("the daemon stopped"));
        Ok(())
    });
}

// ---- regressions the fuzz targets found ---------------------------------------------------------

/// `fuzz_shell_templates_print_values_verbatim`: a value with a NUL rendered a script that no
/// shell could be started with ("nul byte found in provided data"); the NUL is now dropped.
#[test]
fn a_nul_in_a_value_is_dropped_and_the_step_still_runs() {
    let ctx = context("a\0b", "", "\0", "");
    let rendered = Templates::new()
        .render(
            "printf '%s' {{ task }}{{ vars.title }} > out",
            Mode::Shell,
            &ctx,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("/bin/sh")
        .args(["-c", &rendered])
        .current_dir(dir.path())
        .status()
        .expect("/bin/sh starts: the script has no NUL");
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "ab"
    );
}

/// `fuzz_cut_logs_are_completed_with_a_later_seq`: a log ending at seq u64::MAX made the
/// daemon's `record` overflow (a panic; in release a seq going back to 0). It is now an error.
#[test]
fn a_log_at_the_largest_seq_is_refused_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("t.yaml");
    let end = ended(&task);
    let log = log_path(&task, end.run);
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let before = br#"{"seq":18446744073709551615}"#;
    std::fs::write(&log, before).unwrap();
    let error = end.record().unwrap_err();
    assert!(error.to_string().contains("largest seq"), "{error}");
    assert_eq!(std::fs::read(&log).unwrap(), before, "nothing half-written");
}

/// `fuzz_config_files_get_located_diagnostics`: the first byte that is not UTF-8 was located by
/// its byte offset in the line, not its character column (column 4 after one `日`).
#[test]
fn a_file_that_is_not_utf8_is_located_in_characters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blueprints/b.yaml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"name: \xe6\x97\xa5\n\xe6\x97\xa5\xe6").unwrap();
    let validation = Validator::new().validate_paths(&[path]);
    let d = &validation.diagnostics[0];
    assert_eq!(
        (d.code, d.line, d.column),
        ("not-utf8", Some(2), Some(2)),
        "{d:?}"
    );
}

/// `fuzz_config_files_get_located_diagnostics`: a template error just after a multi-byte
/// character (here a BOM) made `maxions validate` panic slicing the template inside it.
#[test]
fn a_template_error_after_a_bom_is_located_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blueprints/b.yaml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        "name: b\nsteps:\n  - id: s\n    run: \"echo {{\u{feff} task }}\"\n",
    )
    .unwrap();
    let validation = Validator::new().validate_paths(&[path]);
    let d = validation
        .diagnostics
        .iter()
        .find(|d| d.code == "template-syntax")
        .unwrap_or_else(|| panic!("{:?}", validation.diagnostics));
    assert_eq!(d.line, Some(4), "{d:?}");
}

/// Found by `fuzz_config_files_get_located_diagnostics`, not fixed yet: the undefined `reviewer`
/// is on line 8, but is reported on line 9 (one line per blank line opening the block).
#[test]
#[ignore = "known bug: template positions in a block scalar that opens with a blank line"]
fn a_template_in_a_block_after_a_blank_line_is_placed_on_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blueprints/b.yaml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = "name: undefined\nagent: { kind: command, command: [cat] }\nsteps:\n  - id: implement\n    agent: |\n\n      {{ task }}\n      Then tell {{ reviewer }}.\n";
    std::fs::write(&path, text).unwrap();
    let validation = Validator::new().validate_paths(&[path]);
    let d = validation
        .diagnostics
        .iter()
        .find(|d| d.code == "undefined-variable")
        .unwrap_or_else(|| panic!("{:?}", validation.diagnostics));
    assert_eq!(d.line, Some(8), "{d:?}");
}
