//! `maxions validate`: every problem in every file in one pass. Syntax first; then the structural
//! pass against the schema; then the semantic checks (steps, references, templates, secrets),
//! which work on the located tree so that they run even when other parts of a file are broken.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::diagnostic::{Diagnostic, did_you_mean, token_width};
use super::yaml::{self, Key, Node, Pos, Value};
use super::{Blueprint, DaemonConfig, Task, check, schema};
use crate::template::{
    Mode, Names, REPO_FIELDS, ROOTS, RUN_FIELDS, TemplateError, Templates, shell_hazards,
};

/// Files larger than this are refused before parsing: no config needs a megabyte.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Task,
    Blueprint,
    Config,
}

impl FileKind {
    pub fn noun(self) -> &'static str {
        match self {
            FileKind::Task => "task",
            FileKind::Blueprint => "blueprint",
            FileKind::Config => "maxions.yaml",
        }
    }
}

/// The outcome of validating some paths.
#[derive(Debug, Default)]
pub struct Validation {
    pub diagnostics: Vec<Diagnostic>,
    /// The text of every file read, by its displayed name, for rendering excerpts.
    pub sources: BTreeMap<String, Arc<str>>,
    /// The files looked at, by displayed name, with their kind when it could be told.
    pub files: Vec<(String, Option<FileKind>)>,
    /// Some path could not be read at all (exit code 2).
    pub unreadable: bool,
}

impl Validation {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }
}

/// A file that parsed as YAML.
#[derive(Debug, Clone)]
pub struct Document {
    pub path: PathBuf,
    pub display: String,
    pub text: Arc<str>,
    pub tree: Node,
    pub kind: Option<FileKind>,
}

/// A located, already-checked daemon config.
#[derive(Debug, Clone)]
struct ConfigInfo {
    dir: PathBuf,
    config: Option<DaemonConfig>,
}

pub struct Validator {
    templates: Templates,
    pub result: Validation,
    documents: HashMap<PathBuf, Option<Arc<Document>>>,
    configs: HashMap<PathBuf, Option<Arc<ConfigInfo>>>,
    reported: HashSet<PathBuf>,
    /// A blueprint that replaces the one tasks name (`maxions run --blueprint`).
    blueprint_override: Option<PathBuf>,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    pub fn new() -> Self {
        Self {
            templates: Templates::new(),
            result: Validation::default(),
            documents: HashMap::new(),
            configs: HashMap::new(),
            reported: HashSet::new(),
            blueprint_override: None,
        }
    }

    /// Checks tasks against this blueprint instead of the one they name.
    #[must_use]
    pub fn with_blueprint(mut self, path: Option<PathBuf>) -> Self {
        self.blueprint_override = path;
        self
    }

    /// Uses `config` as the `maxions.yaml` of `dir` instead of reading it: the daemon validates
    /// tasks against the config it runs with (the last good one while the file is broken).
    #[must_use]
    pub fn with_config(mut self, dir: &Path, config: DaemonConfig) -> Self {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let info = Arc::new(ConfigInfo {
            dir: dir.clone(),
            config: Some(config),
        });
        self.configs.insert(dir, Some(info));
        self
    }

    /// The config that applies to `path` (the nearest `maxions.yaml` above it), with its directory.
    pub fn daemon_config(&mut self, path: &Path) -> Option<(PathBuf, DaemonConfig)> {
        let info = self.config_for(path)?;
        Some((info.dir.clone(), info.config.clone()?))
    }

    /// The blueprint file a task resolves to, once the task has been validated.
    pub fn blueprint_path(&mut self, task_path: &Path, tree: &Node) -> Option<PathBuf> {
        if let Some(path) = &self.blueprint_override {
            return Some(path.clone());
        }
        let name = tree
            .get("blueprint")
            .and_then(Node::as_str)
            .unwrap_or(Task::DEFAULT_BLUEPRINT)
            .to_owned();
        let config = self.config_for(task_path);
        blueprint_candidates(task_path, &name, config.as_deref())
            .into_iter()
            .find(|p| p.is_file())
    }

    /// Validates files and directories (every `*.yaml`/`*.yml` below a directory).
    pub fn validate_paths(mut self, paths: &[PathBuf]) -> Validation {
        for path in paths {
            self.validate_path(path);
        }
        self.result
    }

    fn validate_path(&mut self, path: &Path) {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let mut files = Vec::new();
                let mut seen = HashSet::new();
                if let Err(diag) = collect_yaml(path, &mut files, &mut seen, 0) {
                    self.unreadable(*diag);
                }
                if files.is_empty() {
                    let d = Diagnostic::warning(
                        "no-files",
                        format!("no *.yaml or *.yml files in `{}`", path.display()),
                    )
                    .in_file(path.display().to_string());
                    self.result.diagnostics.push(d);
                }
                for file in files {
                    self.validate_file(&file, None);
                }
            }
            Ok(_) => {
                self.validate_file(path, None);
            }
            Err(err) => self.unreadable(read_error(path, &err)),
        }
    }

    fn unreadable(&mut self, diagnostic: Diagnostic) {
        self.result.unreadable = true;
        self.result.diagnostics.push(diagnostic);
    }

    /// Reads and parses a file once; reports read and syntax problems once.
    fn document(&mut self, path: &Path, display: Option<String>) -> Option<Arc<Document>> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(doc) = self.documents.get(&key) {
            return doc.clone();
        }
        let display = display.unwrap_or_else(|| display_path(path));
        let doc = self.read_and_parse(path, &display).map(Arc::new);
        self.documents.insert(key, doc.clone());
        doc
    }

    fn read_and_parse(&mut self, path: &Path, display: &str) -> Option<Document> {
        let bytes = match read_limited(path) {
            Ok(bytes) => bytes,
            Err(ReadProblem::Io(err)) => {
                self.unreadable(read_error(path, &err).in_file(display));
                return None;
            }
            Err(ReadProblem::TooLarge(size)) => {
                let d = Diagnostic::error(
                    "too-large",
                    format!(
                        "file is {} bytes; config files larger than {} bytes are refused",
                        size, MAX_FILE_BYTES
                    ),
                )
                .in_file(display)
                .hint("is this the right file? tasks and blueprints are a few kilobytes");
                self.result.diagnostics.push(d);
                return None;
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => {
                let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
                let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
                // Columns count characters, as everywhere else (not bytes: `日` is one column).
                let valid_text = std::str::from_utf8(valid).unwrap_or_default();
                let last_line = valid_text.rsplit('\n').next().unwrap_or_default();
                let column = last_line.chars().count() + 1;
                let d = Diagnostic::error("not-utf8", "file is not valid UTF-8 text")
                    .in_file(display)
                    .at(Pos::new(line, column))
                    .hint("save the file as UTF-8");
                self.result.diagnostics.push(d);
                return None;
            }
        };
        let text: Arc<str> = text.into();
        self.result
            .sources
            .insert(display.to_owned(), Arc::clone(&text));
        if text.trim().is_empty() {
            let d = Diagnostic::error("empty-file", "file is empty")
                .in_file(display)
                .hint("a task needs `task:` and `repo:`; a blueprint needs `name:` and `steps:`");
            self.result.diagnostics.push(d);
            return None;
        }
        let tree = match yaml::parse(&text) {
            Ok(tree) => tree,
            Err(err) => {
                let d = syntax_diagnostic(&err, &text).in_file(display);
                self.result.diagnostics.push(d);
                return None;
            }
        };
        let kind = detect_kind(path, &tree);
        Some(Document {
            path: path.to_path_buf(),
            display: display.to_owned(),
            text,
            tree,
            kind,
        })
    }

    /// Validates one file (and, for a task, the blueprint it names).
    pub fn validate_file(
        &mut self,
        path: &Path,
        expect: Option<FileKind>,
    ) -> Option<Arc<Document>> {
        let doc = self.document(path, None);
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let first_time = self.reported.insert(key);
        let Some(doc) = doc else {
            if first_time {
                self.result.files.push((display_path(path), None));
            }
            return None;
        };
        if !first_time {
            return Some(doc);
        }
        let kind = expect.or(doc.kind);
        self.result.files.push((doc.display.clone(), kind));
        let mut found = Vec::new();
        match kind {
            None => {
                let d = if matches!(doc.tree.value, Value::Map(_)) {
                    Diagnostic::error(
                        "unknown-kind",
                        "cannot tell whether this is a task, a blueprint or a maxions.yaml",
                    )
                    .at(Pos::new(1, 1))
                    .hint("a task has `task:` and `repo:`; a blueprint has `name:` and `steps:`")
                } else {
                    Diagnostic::error(
                        "invalid-type",
                        format!(
                            "expected a mapping at the top of the file, found {}",
                            doc.tree.value.type_name()
                        ),
                    )
                    .at(doc.tree.pos)
                };
                found.push(d);
            }
            Some(FileKind::Task) => {
                found = check::check(&doc.tree, &schema::TASK, "the task", &doc.text);
                let extra = self.check_task(&doc);
                found.extend(extra);
            }
            Some(FileKind::Blueprint) => {
                let config = self.config_for(&doc.path);
                found = check::check(&doc.tree, &schema::BLUEPRINT, "the blueprint", &doc.text);
                let uses = self.check_blueprint(&doc, &mut found, config.as_deref());
                drop(uses);
            }
            Some(FileKind::Config) => {
                found = check::check(&doc.tree, &schema::DAEMON_CONFIG, "maxions.yaml", &doc.text);
                check_config(&doc, &mut found);
            }
        }
        // A semantic check may spot the same thing the structural pass did: keep one.
        let mut seen = HashSet::new();
        found.retain(|d| seen.insert((d.line, d.column, d.code, d.message.clone())));
        found.sort_by_key(|d| (d.line, d.column));
        for d in found {
            self.result.diagnostics.push(d.in_file(doc.display.clone()));
        }
        Some(doc)
    }

    /// The nearest `maxions.yaml` at or above `path`'s directory, validated once.
    fn config_for(&mut self, path: &Path) -> Option<Arc<ConfigInfo>> {
        let start = std::fs::canonicalize(path).ok()?;
        let mut dir = start.parent()?.to_path_buf();
        let mut visited = Vec::new();
        let found = loop {
            if let Some(cached) = self.configs.get(&dir) {
                break cached.clone();
            }
            visited.push(dir.clone());
            let candidate = ["maxions.yaml", "maxions.yml"]
                .iter()
                .map(|name| dir.join(name))
                .find(|p| p.is_file());
            if let Some(file) = candidate {
                let doc = self.validate_file(&file, Some(FileKind::Config));
                let config = doc.and_then(|d| typed::<DaemonConfig>(&d.tree));
                break Some(Arc::new(ConfigInfo {
                    dir: dir.clone(),
                    config,
                }));
            }
            match dir.parent() {
                Some(parent) => dir = parent.to_path_buf(),
                None => break None,
            }
        };
        for dir in visited {
            self.configs.insert(dir, found.clone());
        }
        found
    }

    fn check_task(&mut self, doc: &Document) -> Vec<Diagnostic> {
        let mut found = Vec::new();
        let tree = &doc.tree;
        if tree.get("timezone").is_some() && tree.get("schedule").is_none() {
            let key = tree.key("timezone").expect("checked above");
            found.push(
                Diagnostic::warning(
                    "unused-timezone",
                    "`timezone` has no effect without `schedule`",
                )
                .at(key.pos)
                .width(8),
            );
        }
        let config = self.config_for(&doc.path);
        check_task_repo_and_branch(doc, config.as_deref(), &mut found);
        if let Some(path) = self.blueprint_override.clone() {
            if let Some(blueprint) = self.validate_file(&path, Some(FileKind::Blueprint)) {
                self.check_task_secrets(doc, &blueprint, config.as_deref());
            }
            return found;
        }
        let (name, name_node) = match tree.get("blueprint") {
            Some(node) => match node.as_str() {
                Some(name) => (name.to_owned(), Some(node)),
                None => return found,
            },
            None => (Task::DEFAULT_BLUEPRINT.to_owned(), None),
        };
        let candidates = blueprint_candidates(&doc.path, &name, config.as_deref());
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            let dirs = blueprint_dirs(&doc.path, config.as_deref());
            let known = known_blueprints(&dirs);
            let hint = match did_you_mean(&name, known.iter().map(String::as_str)) {
                Some(best) => format!("did you mean `{best}`?"),
                None if known.is_empty() => format!(
                    "looked for {}; no blueprints found there",
                    candidates
                        .iter()
                        .map(|p| format!("`{}`", display_path(p)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!("known blueprints: {}", known.join(", ")),
            };
            let message = if name_node.is_some() {
                format!("blueprint `{name}` not found")
            } else {
                format!("blueprint `{name}` (the default, as the task names none) not found")
            };
            let mut d = Diagnostic::error("blueprint-not-found", message).hint(hint);
            d = match name_node {
                Some(node) => d.at(node.pos).width(token_width(&doc.text, node.pos)),
                None => d.at(Pos::new(1, 1)),
            };
            found.push(d);
            return found;
        };
        let path = path.clone();
        let Some(blueprint) = self.validate_file(&path, Some(FileKind::Blueprint)) else {
            return found;
        };
        // Cross-check the variables the blueprint's templates read against the task's vars.
        let mut scratch = Vec::new();
        let uses = self.check_blueprint(&blueprint, &mut scratch, config.as_deref());
        self.check_task_secrets(doc, &blueprint, config.as_deref());
        let defined: BTreeSet<&str> = match tree.get("vars").map(|v| &v.value) {
            Some(Value::Map(entries)) => entries.iter().map(|(k, _)| k.name.as_str()).collect(),
            _ => BTreeSet::new(),
        };
        for (var, (pos, step)) in &uses.vars {
            if defined.contains(var.as_str()) {
                continue;
            }
            let anchor = tree
                .key("vars")
                .or_else(|| tree.key("task"))
                .or_else(|| tree.key("blueprint"));
            let mut d = Diagnostic::error(
                "undefined-variable",
                format!(
                    "blueprint `{}` uses `vars.{var}` in {step}, but this task does not define it",
                    blueprint
                        .tree
                        .get("name")
                        .and_then(Node::as_str)
                        .unwrap_or("?")
                ),
            )
            .hint(format!(
                "add `{var}: ...` under `vars:` (used at {}:{}:{})",
                blueprint.display, pos.line, pos.column
            ));
            if let Some(key) = anchor {
                d = d.at(key.pos).width(key.name.chars().count());
            }
            found.push(d);
        }
        found
    }

    /// The secrets `blueprint` names, against the config that applies to the task `doc` (which
    /// is what the run reads them from). A task with no maxions.yaml has no secrets. Reported in
    /// the blueprint, at each `secrets:` entry, unless the blueprint's own check (same config)
    /// reported it already.
    fn check_task_secrets(
        &mut self,
        task: &Document,
        blueprint: &Document,
        config: Option<&ConfigInfo>,
    ) {
        let own = self.config_for(&blueprint.path);
        let same = match (&own, config) {
            (Some(own), Some(task)) => own.dir == task.dir,
            _ => false,
        };
        // A maxions.yaml that does not load is reported on its own; guessing here helps no one.
        if same || config.is_some_and(|c| c.config.is_none()) {
            return;
        }
        let secrets = config.and_then(|c| c.config.as_ref()).map(|c| &c.secrets);
        let task_name = task.display.clone();
        for item in secret_entries(&blueprint.tree) {
            let Some(name) = item.as_str() else { continue };
            if secrets.is_some_and(|s| s.keys().any(|k| k.0 == name)) {
                continue;
            }
            let (message, hint) = match secrets {
                Some(_) => (
                    format!(
                        "secret `{name}` is not defined in the maxions.yaml of task `{task_name}`"
                    ),
                    format!("define it under `secrets:` there, e.g. `{name}: {{ env: {name} }}`"),
                ),
                None => (
                    format!(
                        "secret `{name}` is not defined: no maxions.yaml applies to task \
                         `{task_name}`, so it has no secrets"
                    ),
                    format!(
                        "add a maxions.yaml beside the task's `tasks/` directory with \
                         `secrets: {{ {name}: {{ env: {name} }} }}`"
                    ),
                ),
            };
            let d = Diagnostic::error("unknown-secret", message)
                .at(item.pos)
                .width(token_width(&blueprint.text, item.pos))
                .hint(hint)
                .in_file(blueprint.display.clone());
            // The blueprint's own "no maxions.yaml here" warning says less than this error.
            self.result.diagnostics.retain(|old| {
                !(old.file == d.file
                    && old.line == d.line
                    && old.column == d.column
                    && old.code == "unknown-secret"
                    && !old.is_error())
            });
            let known = self.result.diagnostics.iter().any(|old| {
                old.file == d.file
                    && old.line == d.line
                    && old.column == d.column
                    && old.code == d.code
                    && old.message == d.message
            });
            if !known {
                self.result.diagnostics.push(d);
            }
        }
    }

    fn check_blueprint(
        &mut self,
        doc: &Document,
        found: &mut Vec<Diagnostic>,
        config: Option<&ConfigInfo>,
    ) -> BlueprintUses {
        let mut checker = BlueprintChecker {
            templates: &self.templates,
            doc,
            found,
            uses: BlueprintUses::default(),
            config: config.and_then(|c| c.config.as_ref()),
        };
        checker.check();
        checker.uses
    }
}

/// What a blueprint's templates read from the task, for cross-checks.
#[derive(Debug, Default)]
struct BlueprintUses {
    /// `vars.<name>` → first place it is used and the step it is in.
    vars: BTreeMap<String, (Pos, String)>,
}

struct BlueprintChecker<'a> {
    templates: &'a Templates,
    doc: &'a Document,
    found: &'a mut Vec<Diagnostic>,
    uses: BlueprintUses,
    config: Option<&'a DaemonConfig>,
}

/// What is known of one step while checking references to it.
struct StepInfo<'a> {
    id: Option<&'a str>,
    outputs: Vec<&'a str>,
}

impl BlueprintChecker<'_> {
    fn check(&mut self) {
        let tree = &self.doc.tree;
        self.check_sandbox();
        let steps: &[Node] = match tree.get("steps").map(|s| &s.value) {
            Some(Value::Seq(steps)) => steps,
            _ => &[],
        };
        let infos: Vec<StepInfo> = steps
            .iter()
            .map(|step| StepInfo {
                id: step.get("id").and_then(Node::as_str),
                outputs: match step.get("outputs").map(|o| &o.value) {
                    Some(Value::Map(entries)) => {
                        entries.iter().map(|(k, _)| k.name.as_str()).collect()
                    }
                    _ => Vec::new(),
                },
            })
            .collect();
        let has_agent = tree
            .get("agent")
            .is_some_and(|a| matches!(a.value, Value::Map(_)));
        let mut ids: HashMap<&str, Pos> = HashMap::new();
        for (index, step) in steps.iter().enumerate() {
            let Value::Map(entries) = &step.value else {
                continue;
            };
            let name = match infos[index].id {
                Some(id) => format!("step `{id}`"),
                None => format!("step {}", index + 1),
            };
            if let (Some(id), Some(node)) = (infos[index].id, step.get("id")) {
                if let Some(first) = ids.get(id) {
                    self.found.push(
                        Diagnostic::error("duplicate-step-id", format!("duplicate step id `{id}`"))
                            .at(node.pos)
                            .width(token_width(&self.doc.text, node.pos))
                            .hint(format!(
                                "first used on line {}; step ids must be unique",
                                first.line
                            )),
                    );
                } else {
                    ids.insert(id, node.pos);
                }
            }
            self.check_step_kind(step, entries, &name);
            if !has_agent
                && let Some(key) = step
                    .key("agent")
                    .or_else(|| step.get("fix").and_then(|f| f.key("agent")))
            {
                self.found.push(
                    Diagnostic::error(
                        "missing-agent",
                        format!("{name} runs the agent, but the blueprint has no `agent:`"),
                    )
                    .at(key.pos)
                    .width(key.name.len())
                    .hint(
                        "add e.g. `agent: { kind: command, command: [my-agent] }` at the top level",
                    ),
                );
            }
            if step.get("fix").is_some() && step.get("check").is_none() {
                let key = step.key("fix").expect("checked above");
                self.found.push(
                    Diagnostic::error(
                        "fix-without-check",
                        format!("{name} has `fix` but no `check`"),
                    )
                    .at(key.pos)
                    .width(3)
                    .hint("`fix` repairs the failures of the `check` list in the same step"),
                );
            }
            if infos[index].id.is_none()
                && let Some(key) = step.key("outputs")
            {
                self.found.push(
                    Diagnostic::warning(
                        "unnamed-outputs",
                        format!("{name} has outputs but no `id`, so no later step can read them"),
                    )
                    .at(key.pos)
                    .width(7)
                    .hint("add `id:` to the step"),
                );
            }
            if let Some(Value::Seq(checks)) = step.get("check").map(|c| &c.value) {
                let mut check_ids: HashMap<&str, usize> = HashMap::new();
                for check in checks {
                    if let Some(id_node) = check.get("id")
                        && let Some(id) = id_node.as_str()
                        && let Some(line) = check_ids.insert(id, id_node.pos.line)
                    {
                        self.found.push(
                            Diagnostic::error(
                                "duplicate-check-id",
                                format!("duplicate check id `{id}` in {name}"),
                            )
                            .at(id_node.pos)
                            .width(id.len())
                            .hint(format!("first used on line {line}")),
                        );
                    }
                }
            }
            self.check_env_keys(step);
            self.check_secrets(step.get("secrets"));
            self.check_step_templates(step, &infos, index, &name);
        }
        self.check_git_order(steps);
        if let Some(agent) = tree.get("agent") {
            self.check_agent(agent);
            self.check_secrets(agent.get("secrets"));
            if let Some(key) = agent.get("provider").and_then(|p| p.get("key")) {
                self.check_secret(key);
            }
        }
    }

    /// `commit` and `push` work on what `checkout` put in the sandbox, from maxions' own mirror:
    /// one `checkout` before them, and a `commit` before a `push`.
    fn check_git_order(&mut self, steps: &[Node]) {
        let mut checkout: Option<Pos> = None;
        let mut commit = false;
        for step in steps {
            if let Some(key) = step.key("checkout") {
                if let Some(first) = checkout {
                    self.found.push(
                        Diagnostic::error(
                            "duplicate-checkout",
                            "the repository is checked out twice",
                        )
                        .at(key.pos)
                        .width(8)
                        .hint(format!(
                            "the first `checkout` is on line {}; keep one",
                            first.line
                        )),
                    );
                } else {
                    checkout = Some(key.pos);
                }
            }
            for (kind, needs) in [("commit", "checkout"), ("push", "commit")] {
                let Some(key) = step.key(kind) else { continue };
                let missing = match needs {
                    "checkout" => checkout.is_none(),
                    _ => !commit,
                };
                if missing {
                    self.found.push(
                        Diagnostic::error(
                            "step-order",
                            format!("`{kind}` needs a `{needs}` step before it"),
                        )
                        .at(key.pos)
                        .width(kind.len())
                        .hint(match needs {
                            "checkout" => "add `- checkout: {}` as the first step: maxions seeds /workspace/repo from its own mirror and commits from there",
                            _ => "add a `commit` step before `push`",
                        }),
                    );
                }
            }
            commit |= step.key("commit").is_some();
        }
    }

    fn check_sandbox(&mut self) {
        let Some(sandbox) = self.doc.tree.get("sandbox") else {
            return;
        };
        self.check_engine_labels(sandbox);
        let network = sandbox.get("network");
        let allow_empty = match sandbox.get("allow").map(|a| &a.value) {
            None | Some(Value::Null) => true,
            Some(Value::Seq(items)) => items.is_empty(),
            Some(_) => false,
        };
        match network.and_then(Node::as_str) {
            Some("allowlist") if allow_empty => {
                let node = network.expect("matched");
                self.found.push(
                    Diagnostic::error(
                        "empty-allowlist",
                        "`network: allowlist` with no `allow` entries lets nothing through",
                    )
                    .at(node.pos)
                    .width(9)
                    .hint("list the hosts the sandbox may reach under `allow:`, or use `network: none`"),
                );
            }
            Some("allowlist") => {}
            Some("host") => {
                let node = network.expect("matched");
                self.found.push(
                    Diagnostic::warning(
                        "host-network",
                        "`network: host` gives the sandbox this machine's whole network",
                    )
                    .at(node.pos)
                    .width(4)
                    .hint("prefer `network: allowlist` with the hosts the run needs"),
                );
            }
            _ if !allow_empty => {
                let key = sandbox.key("allow").expect("not empty");
                self.found.push(
                    Diagnostic::warning(
                        "unused-allow",
                        "`allow` has no effect unless `network: allowlist`",
                    )
                    .at(key.pos)
                    .width(5)
                    .hint("add `network: allowlist`"),
                );
            }
            _ => {}
        }
    }

    /// `engine_labels` that no engine of maxions.yaml has: no run of this blueprint could start.
    fn check_engine_labels(&mut self, sandbox: &Node) {
        let Some(Value::Seq(items)) = sandbox.get("engine_labels").map(|n| &n.value) else {
            return;
        };
        let Some(config) = self.config else {
            return;
        };
        let wanted: Vec<&Node> = items.iter().filter(|n| n.as_str().is_some()).collect();
        let fits = |engine: &crate::config::daemon::EngineConfig| {
            wanted.iter().all(|w| {
                engine
                    .labels
                    .iter()
                    .any(|l| Some(l.0.as_str()) == w.as_str())
            })
        };
        if wanted.is_empty() || config.engines.iter().any(fits) {
            return;
        }
        let offered = if config.engines.is_empty() {
            "maxions.yaml lists no `engines`: the one default engine has no labels".to_owned()
        } else {
            let each: Vec<String> = config
                .engines
                .iter()
                .map(|e| {
                    let labels: Vec<&str> = e.labels.iter().map(|l| l.0.as_str()).collect();
                    format!("`{}` [{}]", e.name, labels.join(", "))
                })
                .collect();
            format!("the engines offer: {}", each.join("; "))
        };
        let first = wanted[0];
        let names: Vec<&str> = wanted.iter().filter_map(|n| n.as_str()).collect();
        self.found.push(
            Diagnostic::error(
                "no-engine-fits",
                format!(
                    "no engine has every label of `engine_labels` ({}): no run of this blueprint could start",
                    names.join(", ")
                ),
            )
            .at(first.pos)
            .width(token_width(&self.doc.text, first.pos))
            .hint(format!(
                "{offered}; add the labels to an engine under `engines:` in maxions.yaml, or drop them here"
            )),
        );
    }

    fn check_agent(&mut self, agent: &Node) {
        let kind = agent.get("kind").and_then(Node::as_str);
        match (kind, agent.key("command")) {
            (Some("command"), None) => {
                let node = agent.get("kind").expect("matched");
                self.found.push(
                    Diagnostic::error("missing-field", "`kind: command` needs `command: [program, args...]`")
                        .at(node.pos)
                        .width(7)
                        .hint("the prompt goes to the program's stdin, e.g. `command: [./scripts/agent.sh]`"),
                );
            }
            (Some(kind @ ("pi" | "claude" | "codex")), Some(key)) => {
                self.found.push(
                    Diagnostic::error(
                        "invalid-field",
                        format!("`command` is only for `kind: command`, not `{kind}`"),
                    )
                    .at(key.pos)
                    .width(7)
                    .hint("use `flags` to pass extra arguments to the agent"),
                );
            }
            _ => {}
        }
        if let Some(kind @ ("pi" | "claude" | "codex")) = kind {
            self.check_agent_reach(agent, kind);
            self.check_agent_cost(agent, kind);
        }
    }

    /// A real agent talks to its model provider: the sandbox's network must let it, and only
    /// it (a provider host missing from `allow` is refused at run time).
    fn check_agent_reach(&mut self, agent: &Node, kind: &str) {
        let kind_node = agent.get("kind").expect("has a kind");
        let sandbox = self.doc.tree.get("sandbox");
        let network = sandbox.and_then(|s| s.get("network"));
        let provider = agent.get("provider");
        let base_url = provider.and_then(|p| p.get("base_url"));
        let api = provider.and_then(|p| p.get("api"));
        if let Some(api_node) = api
            && let Some(api) = api_node.as_str()
        {
            let speaks = match kind {
                "claude" => Some("anthropic-messages"),
                "codex" => Some("openai-responses"),
                _ => None,
            };
            if let Some(speaks) = speaks
                && api != speaks
            {
                self.found.push(
                    Diagnostic::error(
                        "provider-api",
                        format!("`kind: {kind}` speaks only `{speaks}`, not `{api}`"),
                    )
                    .at(api_node.pos)
                    .width(api.len())
                    .hint(format!("use `api: {speaks}` or leave `api` out")),
                );
            }
        }
        // The host the agent calls: the blueprint's provider, or the agent's default one.
        let (host, at) = match base_url {
            Some(node) => {
                let Some(url) = node.as_str() else { return };
                match provider_host(url) {
                    Some(host) => (host, node),
                    None => {
                        self.found.push(
                            Diagnostic::error(
                                "invalid-url",
                                format!("`{url}` is not an http:// or https:// URL with a host"),
                            )
                            .at(node.pos)
                            .width(token_width(&self.doc.text, node.pos))
                            .hint("e.g. `base_url: https://llm.example.com/v1`"),
                        );
                        return;
                    }
                }
            }
            None => {
                let model = agent.get("model").and_then(Node::as_str).unwrap_or("");
                let host = match kind {
                    "claude" => "api.anthropic.com",
                    "codex" => "api.openai.com",
                    _ if model.starts_with("github-copilot/") => "api.individual.githubcopilot.com",
                    _ if model.starts_with("anthropic/") => "api.anthropic.com",
                    _ if model.starts_with("openai/") => "api.openai.com",
                    _ => return,
                };
                (host.to_owned(), kind_node)
            }
        };
        match network.and_then(Node::as_str) {
            None | Some("none") => {
                let at = network.unwrap_or(kind_node);
                self.found.push(
                    Diagnostic::error(
                        "agent-network",
                        format!("`kind: {kind}` must reach its model provider (`{host}`), but the sandbox has no network"),
                    )
                    .at(at.pos)
                    .width(token_width(&self.doc.text, at.pos))
                    .hint(format!("set `sandbox.network: allowlist` with `allow: [{host}]`")),
                );
            }
            Some("allowlist") => {
                let Ok(parsed) = crate::sandbox::egress::Host::parse(&host) else {
                    return;
                };
                let allowed = match sandbox.and_then(|s| s.get("allow")).map(|a| &a.value) {
                    Some(Value::Seq(items)) => items.iter().filter_map(Node::as_str).any(|p| {
                        p.parse::<crate::sandbox::egress::HostPattern>()
                            .is_ok_and(|p| p.matches_host(&parsed))
                    }),
                    _ => false,
                };
                if !allowed {
                    self.found.push(
                        Diagnostic::warning(
                            "provider-not-allowed",
                            format!("the agent's model provider `{host}` is not on `sandbox.allow`: the proxy will refuse it"),
                        )
                        .at(at.pos)
                        .width(token_width(&self.doc.text, at.pos))
                        .hint(format!("add `{host}` (with its port, if not 443 or 80) to `sandbox.allow`")),
                    );
                }
            }
            _ => {}
        }
    }

    /// `max_cost_usd` needs a cost: Codex reports none, so it needs `prices`.
    fn check_agent_cost(&mut self, agent: &Node, kind: &str) {
        let Some(max_cost) = agent.get("budget").and_then(|b| b.key("max_cost_usd")) else {
            return;
        };
        if agent.get("prices").is_some() {
            return;
        }
        let (severity, why) = match kind {
            "codex" => (
                Diagnostic::error as fn(_, _) -> Diagnostic,
                "Codex reports no cost",
            ),
            _ if agent.get("provider").is_some() => (
                Diagnostic::warning as fn(_, _) -> Diagnostic,
                "a provider of your own has no known prices",
            ),
            _ => return,
        };
        self.found.push(
            severity(
                "budget-without-prices",
                format!("`max_cost_usd` cannot be enforced: {why}"),
            )
            .at(max_cost.pos)
            .width(max_cost.name.len())
            .hint("add `prices: { input: 1.25, output: 10 }` (US dollars per million tokens) to `agent`"),
        );
    }

    fn check_step_kind(&mut self, step: &Node, entries: &[(Key, Node)], name: &str) {
        let kinds: Vec<&Key> = entries
            .iter()
            .map(|(k, _)| k)
            .filter(|k| Step::KINDS.contains(&k.name.as_str()))
            .collect();
        match kinds.as_slice() {
            [] => {
                let known = schema_properties(&schema::BLUEPRINT, "Step");
                let unknown: Vec<&Key> = entries
                    .iter()
                    .map(|(k, _)| k)
                    .filter(|k| !known.contains(&k.name.as_str()))
                    .collect();
                if unknown.is_empty() {
                    self.found.push(
                        Diagnostic::error("missing-step-kind", format!("{name} does nothing"))
                            .at(step.pos)
                            .width(token_width(&self.doc.text, step.pos))
                            .hint(format!("give it one of {}", kinds_list())),
                    );
                }
                for key in unknown {
                    // Replace the structural pass's "unknown field" with a clearer message.
                    self.found.retain(|d| {
                        !(d.code == "unknown-field"
                            && d.line == Some(key.pos.line)
                            && d.column == Some(key.pos.column))
                    });
                    let hint = did_you_mean(&key.name, Step::KINDS)
                        .map(|best| format!("did you mean `{best}`?"))
                        .unwrap_or_else(|| format!("a step is one of {}", kinds_list()));
                    self.found.push(
                        Diagnostic::error(
                            "unknown-step-kind",
                            format!("unknown step kind `{}` in {name}", key.name),
                        )
                        .at(key.pos)
                        .width(key.name.chars().count())
                        .hint(hint),
                    );
                }
            }
            [_] => {}
            [first, rest @ ..] => {
                for key in rest {
                    self.found.push(
                        Diagnostic::error(
                            "multiple-step-kinds",
                            format!("{name} has both `{}` and `{}`", first.name, key.name),
                        )
                        .at(key.pos)
                        .width(key.name.chars().count())
                        .hint("a step does one thing: split it into two steps"),
                    );
                }
            }
        }
    }

    fn check_env_keys(&mut self, step: &Node) {
        if let Some(Value::Map(entries)) = step.get("env").map(|e| &e.value) {
            for (key, _) in entries {
                if let Err(problem) = super::formats::check("maxions-env-name", &key.name) {
                    self.found.push(
                        Diagnostic::error(problem.code, problem.message)
                            .at(key.pos)
                            .width(key.name.chars().count())
                            .maybe_hint(problem.hint),
                    );
                }
            }
        }
    }

    fn check_secrets(&mut self, secrets: Option<&Node>) {
        let Some(Value::Seq(items)) = secrets.map(|s| &s.value) else {
            return;
        };
        for item in items {
            self.check_secret(item);
        }
    }

    /// One secret name: defined in maxions.yaml, and not the old git credential.
    fn check_secret(&mut self, item: &Node) {
        {
            let Some(name) = item.as_str() else { return };
            let width = token_width(&self.doc.text, item.pos);
            if name == crate::config::blueprint::GIT_TOKEN {
                self.found.push(
                    Diagnostic::warning(
                        "git-token-secret",
                        "`GIT_TOKEN` is an ordinary secret now: maxions gives no git credentials \
                         to steps",
                    )
                    .at(item.pos)
                    .width(width)
                    .hint("use `checkout: {}`; credentials never enter the sandbox"),
                );
            }
            let Some(config) = self.config else {
                self.found.push(
                    Diagnostic::warning(
                        "unknown-secret",
                        format!("secret `{name}` is not defined: no maxions.yaml applies here"),
                    )
                    .at(item.pos)
                    .width(width)
                    .hint(format!(
                        "a task using this blueprint needs `{name}` under `secrets:` in its \
                         maxions.yaml"
                    )),
                );
                return;
            };
            if config.secrets.keys().any(|k| k.0 == name) {
                return;
            }
            let known: Vec<&str> = config.secrets.keys().map(|k| k.0.as_str()).collect();
            let hint = match did_you_mean(name, known.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!(
                    "define it under `secrets:` in maxions.yaml, e.g. `{name}: {{ env: {name} }}`"
                ),
            };
            self.found.push(
                Diagnostic::error(
                    "unknown-secret",
                    format!("secret `{name}` is not defined in maxions.yaml"),
                )
                .at(item.pos)
                .width(width)
                .hint(hint),
            );
        }
    }

    fn check_step_templates(&mut self, step: &Node, infos: &[StepInfo], index: usize, name: &str) {
        let mut fields: Vec<(&Node, Mode, bool)> = Vec::new();
        fn add<'n>(
            fields: &mut Vec<(&'n Node, Mode, bool)>,
            node: Option<&'n Node>,
            mode: Mode,
            fix: bool,
        ) {
            if let Some(node) = node.filter(|n| n.as_str().is_some()) {
                fields.push((node, mode, fix));
            }
        }
        add(&mut fields, step.get("run"), Mode::Shell, false);
        add(&mut fields, step.get("agent"), Mode::Text, false);
        if let Some(Value::Seq(checks)) = step.get("check").map(|c| &c.value) {
            for check in checks {
                add(&mut fields, check.get("run"), Mode::Shell, false);
            }
        }
        add(
            &mut fields,
            step.get("fix").and_then(|f| f.get("agent")),
            Mode::Text,
            true,
        );
        add(
            &mut fields,
            step.get("commit").and_then(|c| c.get("message")),
            Mode::Text,
            false,
        );
        if let Some(pr) = step.get("pull_request") {
            if let Some(draft) = pr.get("draft")
                && let Some(text) = draft.as_str()
                && !text.contains("{{")
            {
                self.found.push(
                    Diagnostic::error("invalid-value", format!("`draft: {text}` is neither a boolean nor a template"))
                        .at(draft.pos)
                        .width(token_width(&self.doc.text, draft.pos))
                        .hint("write `true`, `false`, or a template such as \"{{ run.failed_checks > 0 }}\""),
                );
            }
            add(&mut fields, pr.get("title"), Mode::Text, false);
            add(&mut fields, pr.get("body"), Mode::Text, false);
            add(&mut fields, pr.get("draft"), Mode::Text, false);
            for list in ["labels", "reviewers"] {
                if let Some(Value::Seq(items)) = pr.get(list).map(|l| &l.value) {
                    for item in items {
                        add(&mut fields, Some(item), Mode::Text, false);
                    }
                }
            }
        }
        if let Some(Value::Map(entries)) = step.get("env").map(|e| &e.value) {
            for (_, value) in entries {
                add(&mut fields, Some(value), Mode::Text, false);
            }
        }
        for (node, mode, in_fix) in fields {
            let text = node.as_str().expect("filtered to strings");
            match self.templates.check(text, mode) {
                Ok(names) => {
                    self.check_names(&names, node, text, infos, index, name, in_fix);
                    for (offset, filter) in self.templates.unknown_filters(text) {
                        self.found.push(
                            Diagnostic::error(
                                "unknown-filter",
                                format!("unknown filter `{filter}` in {name}"),
                            )
                            .at(template_pos(&self.doc.text, node, text, offset))
                            .width(filter.chars().count())
                            .hint("see README.md, \"Templates\", for the filters there are"),
                        );
                    }
                    if mode == Mode::Shell {
                        self.check_shell_quoting(node, text, name);
                    }
                }
                Err(err) => self.template_error(&err, node, text, name),
            }
        }
        if let Some(node) = step.get("if")
            && let Some(text) = node.as_str()
        {
            match self.templates.check_condition(text) {
                Ok(names) => self.check_names(&names, node, text, infos, index, name, false),
                Err(err) => self.template_error(&err, node, text, name),
            }
        }
    }

    /// A value inside quotes, a here-document or a comment of a `run:` command would not be
    /// quoted by its own quotes: task text would run.
    fn check_shell_quoting(&mut self, node: &Node, text: &str, step: &str) {
        for hazard in shell_hazards(text) {
            let tag = &text[hazard.offset..];
            let width = tag
                .find("}}")
                .map_or(2, |end| tag[..end + 2].chars().count());
            self.found.push(
                Diagnostic::error(
                    "shell-quoting",
                    format!(
                        "template {} in the shell command of {step}: its value would not be quoted",
                        hazard.kind.place()
                    ),
                )
                .at(template_pos(&self.doc.text, node, text, hazard.offset))
                .width(width.clamp(2, 40))
                .hint(hazard.kind.hint()),
            );
        }
    }

    fn template_error(&mut self, err: &TemplateError, node: &Node, text: &str, step: &str) {
        let offset = err.range.as_ref().map_or(0, |r| r.start);
        let width = err
            .range
            .as_ref()
            // `get`: the range comes from the template engine and may not fall on characters.
            .and_then(|r| text.get(r.clone()))
            .map_or(1, |t| t.chars().count().clamp(1, 40));
        self.found.push(
            Diagnostic::error(
                "template-syntax",
                format!("template error in {step}: {}", err.message),
            )
            .at(template_pos(&self.doc.text, node, text, offset))
            .width(width),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn check_names(
        &mut self,
        names: &Names,
        node: &Node,
        text: &str,
        infos: &[StepInfo],
        index: usize,
        step: &str,
        in_fix: bool,
    ) {
        for full in names {
            let parts: Vec<&str> = full.split('.').collect();
            let (offset, width) = find_name(text, full);
            let pos = template_pos(&self.doc.text, node, text, offset);
            let problem: Option<(&'static str, String, Option<String>)> = match parts.as_slice() {
                ["failed", ..] if in_fix => None,
                ["failed", ..] => Some((
                    "undefined-variable",
                    format!("`failed` is only defined in `fix.agent`, not in {step}"),
                    None,
                )),
                ["repo", field, ..] if !REPO_FIELDS.contains(field) => Some((
                    "undefined-variable",
                    format!("`repo` has no field `{field}` (in {step})"),
                    Some(suggest(field, &REPO_FIELDS)),
                )),
                ["run", field, ..] if !RUN_FIELDS.contains(field) => Some((
                    "undefined-variable",
                    format!("`run` has no field `{field}` (in {step})"),
                    Some(suggest(field, &RUN_FIELDS)),
                )),
                ["vars", var, ..] => {
                    self.uses
                        .vars
                        .entry((*var).to_owned())
                        .or_insert((pos, step.to_owned()));
                    None
                }
                ["steps", id, rest @ ..] => {
                    self.check_step_ref(id, rest.first().copied(), infos, index, step)
                }
                [root, ..] if !ROOTS.contains(root) => {
                    let mut roots: Vec<&str> = ROOTS.to_vec();
                    if in_fix {
                        roots.push("failed");
                    }
                    Some((
                        "undefined-variable",
                        format!("undefined variable `{root}` in {step}"),
                        Some(suggest(root, &roots)),
                    ))
                }
                _ => None,
            };
            if let Some((code, message, hint)) = problem {
                self.found.push(
                    Diagnostic::error(code, message)
                        .at(pos)
                        .width(width)
                        .maybe_hint(hint),
                );
            }
        }
    }

    fn check_step_ref(
        &self,
        id: &str,
        output: Option<&str>,
        infos: &[StepInfo],
        index: usize,
        step: &str,
    ) -> Option<(&'static str, String, Option<String>)> {
        let target = infos.iter().position(|info| info.id == Some(id));
        let Some(target) = target else {
            let ids: Vec<&str> = infos[..index].iter().filter_map(|i| i.id).collect();
            return Some((
                "unknown-step",
                format!("`steps.{id}` refers to no step (in {step})"),
                Some(suggest(id, &ids)),
            ));
        };
        if target >= index {
            let when = if target == index {
                "is this step itself"
            } else {
                "runs after this one"
            };
            return Some((
                "later-step-output",
                format!("`steps.{id}` {when}: its outputs are not known yet in {step}"),
                Some("a step can only read the outputs of steps before it".to_owned()),
            ));
        }
        let output = output?;
        let outputs = &infos[target].outputs;
        if outputs.contains(&output) {
            return None;
        }
        let hint = match did_you_mean(output, outputs.iter().copied()) {
            Some(best) => format!("did you mean `{best}`?"),
            None if outputs.is_empty() => format!("step `{id}` declares no `outputs:`"),
            None => format!(
                "step `{id}` has outputs {}",
                outputs
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Some((
            "unknown-output",
            format!("step `{id}` has no output `{output}` (in {step})"),
            Some(hint),
        ))
    }
}

use super::blueprint::Step;

fn kinds_list() -> String {
    Step::KINDS
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn suggest(word: &str, candidates: &[&str]) -> String {
    match did_you_mean(word, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None if candidates.is_empty() => "nothing by that name is defined here".to_owned(),
        None => format!(
            "expected one of {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The property names of a definition in a generated schema.
fn schema_properties(schema: &serde_json::Value, definition: &str) -> Vec<&'static str> {
    let _ = schema;
    match definition {
        "Step" => vec![
            "id",
            "if",
            "timeout",
            "env",
            "secrets",
            "continue_on_error",
            "outputs",
            "checkout",
            "run",
            "agent",
            "check",
            "fix",
            "commit",
            "push",
            "pull_request",
        ],
        _ => Vec::new(),
    }
}

/// Where a template reads `name`: the byte offset and the width to underline.
fn find_name(text: &str, name: &str) -> (usize, usize) {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    let root = name.split('.').next().unwrap_or(name);
    for needle in [name, root] {
        let mut start = 0;
        while let Some(found) = text[start..].find(needle) {
            let at = start + found;
            let before = text[..at].chars().next_back();
            let after = text[at + needle.len()..].chars().next();
            if !before.is_some_and(is_ident)
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
            {
                return (at, needle.chars().count());
            }
            start = at + needle.len();
        }
    }
    (0, 1)
}

/// Maps a byte offset in a template (a YAML string) to its line and column in the YAML file.
fn template_pos(source: &str, node: &Node, text: &str, offset: usize) -> Pos {
    let mut offset = offset.min(text.len());
    // An offset from the template engine may fall inside a character (after a BOM, say).
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_in_template = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column_in_line = text[line_start..offset].chars().count();
    let source_lines: Vec<&str> = source.lines().collect();
    let first_line = source_lines
        .get(node.pos.line.saturating_sub(1))
        .copied()
        .unwrap_or("");
    let starts_quoted = first_line
        .chars()
        .nth(node.pos.column.saturating_sub(1))
        .is_some_and(|c| c == '"' || c == '\'');
    if line_in_template == 0 {
        return Pos::new(
            node.pos.line,
            node.pos.column + column_in_line + usize::from(starts_quoted),
        );
    }
    let line = node.pos.line + line_in_template;
    let template_line = text[line_start..].lines().next().unwrap_or("");
    let source_line = source_lines.get(line - 1).copied().unwrap_or("");
    // A block scalar keeps its lines: find this template line's text on the YAML line.
    let column = if template_line.is_empty() {
        node.pos.column
    } else {
        source_line
            .find(template_line)
            .map_or(node.pos.column, |byte| {
                source_line[..byte].chars().count() + 1
            })
    };
    Pos::new(line, column + column_in_line)
}

fn check_config(doc: &Document, found: &mut Vec<Diagnostic>) {
    if let Some(Value::Map(secrets)) = doc.tree.get("secrets").map(|s| &s.value) {
        for (key, _) in secrets {
            if let Err(problem) = super::formats::check("maxions-env-name", &key.name) {
                found.push(
                    Diagnostic::error(problem.code, problem.message)
                        .at(key.pos)
                        .width(key.name.chars().count())
                        .maybe_hint(problem.hint),
                );
            }
        }
    }
    check_config_paths(doc, found);
    check_engines(doc, found);
    if let Some(app) = doc.tree.get("github").and_then(|g| g.get("app"))
        && app.get("private_key_env").is_none()
        && app.get("private_key_file").is_none()
        && let Some(key) = doc.tree.get("github").and_then(|g| g.key("app"))
    {
        found.push(
            Diagnostic::error(
                "missing-field",
                "`github.app` needs `private_key_env` or `private_key_file`",
            )
            .at(key.pos)
            .width(3),
        );
    }
}

/// `engines:`: names unique, `tcp://` only with `tls`, and the certificates there.
fn check_engines(doc: &Document, found: &mut Vec<Diagnostic>) {
    let Some(Value::Seq(engines)) = doc.tree.get("engines").map(|e| &e.value) else {
        return;
    };
    let dir = doc.path.parent().unwrap_or(Path::new("."));
    let located =
        |d: Diagnostic, node: &Node| d.at(node.pos).width(token_width(&doc.text, node.pos));
    let mut names: HashMap<&str, usize> = HashMap::new();
    for engine in engines {
        let name = engine.get("name");
        if let Some(node) = name
            && let Some(text) = node.as_str()
            && let Some(line) = names.insert(text, node.pos.line)
        {
            found.push(
                located(
                    Diagnostic::error(
                        "duplicate-engine",
                        format!("engine `{text}` is named twice (first on line {line})"),
                    ),
                    node,
                )
                .hint("give each engine its own name"),
            );
        }
        let host = engine.get("host").and_then(|h| Some((h, h.as_str()?)));
        let tls = engine.get("tls").and_then(|t| Some((t, t.as_str()?)));
        if let Some((node, host)) = host
            && host.starts_with("tcp://")
            && tls.is_none()
        {
            found.push(
                located(
                    Diagnostic::error(
                        "plain-tcp-engine",
                        format!("engine `{host}` over `tcp://` needs `tls`"),
                    ),
                    node,
                )
                .hint("an engine over plain TCP is root on its machine for anyone who can reach the port: give it TLS with client certificates (`dockerd --tlsverify`) and name their directory in `tls:`"),
            );
        }
        if let Some((node, tls)) = tls {
            let path = dir.join(tls);
            let missing: Vec<&str> = ["ca.pem", "cert.pem", "key.pem"]
                .into_iter()
                .filter(|f| !path.join(f).is_file())
                .collect();
            if !missing.is_empty() {
                found.push(
                    located(
                        Diagnostic::error(
                            "missing-file",
                            format!(
                                "`tls`: `{}` has no {}",
                                display_path(&path),
                                missing.join(", ")
                            ),
                        ),
                        node,
                    )
                    .hint("the directory holds `ca.pem` (the CA of the engine's certificate), `cert.pem` and `key.pem` (this client's), as DOCKER_CERT_PATH does; a relative path is read relative to the directory of maxions.yaml"),
                );
            }
            if let Some((_, host)) = host
                && host.starts_with("unix://")
                && let Some(key) = engine.key("tls")
            {
                found.push(
                    Diagnostic::warning("unused-tls", "`tls` has no effect on a `unix://` engine")
                        .at(key.pos)
                        .width(3),
                );
            }
        }
    }
}

/// The host of an `http://` or `https://` URL.
fn provider_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The `secrets:` entries of a blueprint's steps and agent.
fn secret_entries(tree: &Node) -> Vec<&Node> {
    let mut lists: Vec<&Node> = match tree.get("steps").map(|s| &s.value) {
        Some(Value::Seq(steps)) => steps.iter().filter_map(|s| s.get("secrets")).collect(),
        _ => Vec::new(),
    };
    lists.extend(tree.get("agent").and_then(|a| a.get("secrets")));
    let mut entries: Vec<&Node> = lists
        .into_iter()
        .filter_map(|list| match &list.value {
            Value::Seq(items) => Some(items.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    // In file order, so that diagnostics read top to bottom.
    entries.sort_by_key(|node| (node.pos.line, node.pos.column));
    entries
}

/// A string value of a config file, located.
fn string_at<'a>(tree: &'a Node, path: &[&str]) -> Option<(&'a Node, &'a str)> {
    let node = path.iter().try_fold(tree, |node, key| node.get(key))?;
    Some((node, node.as_str()?))
}

/// The file and directory settings of maxions.yaml, read relative to its directory.
fn check_config_paths(doc: &Document, found: &mut Vec<Diagnostic>) {
    let dir = doc.path.parent().unwrap_or(Path::new("."));
    let located =
        |d: Diagnostic, node: &Node| d.at(node.pos).width(token_width(&doc.text, node.pos));
    if let Some((node, file)) = string_at(&doc.tree, &["github", "app", "private_key_file"]) {
        let path = dir.join(file);
        if !path.is_file() {
            found.push(
                located(
                    Diagnostic::error(
                        "missing-file",
                        format!(
                            "`github.app.private_key_file`: no file `{}`",
                            display_path(&path)
                        ),
                    ),
                    node,
                )
                .hint("a relative path is read relative to the directory of maxions.yaml"),
            );
        }
    }
    if let Some((node, url)) = string_at(&doc.tree, &["github", "web_url"]) {
        let authority = url
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""));
        let plain = (url.starts_with("https://") || url.starts_with("http://"))
            && authority.is_some_and(|a| !a.is_empty() && !a.contains(['@', '%', '\\']));
        if !plain {
            found.push(
                located(
                    Diagnostic::error(
                        "invalid-url",
                        format!("`github.web_url` `{url}` is not `http(s)://host[:port]`"),
                    ),
                    node,
                )
                .hint("the address repositories are cloned from, e.g. `https://ghe.example`"),
            );
        }
    }
    if let Some((node, prefix)) = string_at(&doc.tree, &["branch_prefix"])
        && let Err(problem) = super::task::check_branch_name(&format!("{prefix}x")).and_then(|()| {
            if prefix.is_empty() {
                Err(String::new())
            } else {
                Ok(())
            }
        })
    {
        let why = if problem.is_empty() {
            "it is empty".to_owned()
        } else {
            "branches starting with it are not valid git branch names".to_owned()
        };
        found.push(
            located(
                Diagnostic::error(
                    "invalid-value",
                    format!("`branch_prefix: {prefix}` cannot be used: {why}"),
                ),
                node,
            )
            .hint("use a prefix such as `maxions/`"),
        );
    }
    if let Some(Value::Seq(roots)) = doc.tree.get("local_repos").map(|r| &r.value) {
        for node in roots {
            if let Some(root) = node.as_str()
                && !dir.join(root).is_dir()
            {
                found.push(located(
                    Diagnostic::warning(
                        "missing-directory",
                        format!(
                            "`local_repos`: no directory `{}`",
                            display_path(&dir.join(root))
                        ),
                    ),
                    node,
                ));
            }
        }
    }
}

/// A task's `repo:` (a `file://` repository must lie below the allowed roots) and `branch:`
/// (maxions pushes only under `branch_prefix`, never to the base).
fn check_task_repo_and_branch(
    doc: &Document,
    config: Option<&ConfigInfo>,
    found: &mut Vec<Diagnostic>,
) {
    use super::load::{check_local_repo, local_repo_roots, prefixed_branch};
    let tree = &doc.tree;
    let located =
        |d: Diagnostic, node: &Node| d.at(node.pos).width(token_width(&doc.text, node.pos));
    let typed_config = config.and_then(|c| Some((c.dir.as_path(), c.config.as_ref()?)));
    if let Some((node, text)) = string_at(tree, &["repo"])
        && let Ok(repo) = super::RepoRef::parse(text)
        && let Some(path) = repo.local_path()
    {
        let roots = local_repo_roots(typed_config, &doc.path);
        if let Err(problem) = check_local_repo(&path, &roots) {
            let hint = if typed_config.is_some() {
                "list its directory under `local_repos:` in maxions.yaml"
            } else {
                "without a maxions.yaml, local repositories must lie below the directory that \
                 holds the task's `tasks/` directory; add a maxions.yaml with `local_repos:` \
                 to allow others"
            };
            let problem = problem.describe(|root| match display_path(root) {
                shown if shown.is_empty() => ".".to_owned(),
                shown => shown,
            });
            found.push(located(Diagnostic::error("local-repo-outside", problem), node).hint(hint));
        }
    }
    let prefix = typed_config.map_or_else(super::daemon::default_branch_prefix, |(_, c)| {
        c.branch_prefix.clone()
    });
    let base = string_at(tree, &["base"]);
    match string_at(tree, &["branch"]) {
        // A name git refuses is reported by the format check already.
        Some((node, branch)) if super::task::check_branch_name(branch).is_ok() => {
            if let Err(problem) = super::task::check_push_branch(branch, base.map(|b| b.1), &prefix)
            {
                // The same comparison as `check_push_branch`'s, to pick the matching hint.
                let short = |name: &str| {
                    name.strip_prefix("refs/heads/")
                        .unwrap_or(name)
                        .to_ascii_lowercase()
                };
                let is_base = base.is_some_and(|(_, base)| short(base) == short(branch));
                let hint = if is_base {
                    format!("pick a branch of its own, e.g. `{prefix}{}`", doc_stem(doc))
                } else {
                    format!("start it with `{prefix}`, e.g. `{prefix}{branch}`")
                };
                found.push(located(Diagnostic::error("invalid-branch", problem), node).hint(hint));
            }
        }
        Some(_) => {}
        None => {
            let branch = prefixed_branch(&doc.path, &prefix);
            if let Some((node, base)) = base
                && let Err(problem) = super::task::check_push_branch(&branch, Some(base), &prefix)
            {
                found.push(
                    located(
                        Diagnostic::error(
                            "invalid-branch",
                            format!("{problem} (the task names no `branch:`, so it is `{branch}`)"),
                        ),
                        node,
                    )
                    .hint("give the task a `branch:` of its own"),
                );
            }
        }
    }
}

fn doc_stem(doc: &Document) -> String {
    super::load::prefixed_branch(&doc.path, "")
}

/// Deserializes a checked tree into a typed model.
pub fn typed<T: serde::de::DeserializeOwned>(tree: &Node) -> Option<T> {
    serde_json::from_value(to_json(tree)).ok()
}

/// Deserializes a checked tree into a typed model, or says why not.
pub fn typed_or_error<T: serde::de::DeserializeOwned>(tree: &Node) -> Result<T, String> {
    serde_json::from_value(to_json(tree)).map_err(|e| e.to_string())
}

fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), to_json(v)))
                .collect(),
        ),
    }
}

fn detect_kind(path: &Path, tree: &Node) -> Option<FileKind> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if matches!(file_name, "maxions.yaml" | "maxions.yml") {
        return Some(FileKind::Config);
    }
    if let Value::Map(entries) = &tree.value {
        let has = |key: &str| entries.iter().any(|(k, _)| k.name == key);
        if has("steps") || has("sandbox") {
            return Some(FileKind::Blueprint);
        }
        if has("task") || has("repo") || has("schedule") {
            return Some(FileKind::Task);
        }
        let config_keys = [
            "tasks_dir",
            "blueprints_dir",
            "state_dir",
            "concurrency",
            "secrets",
            "github",
            "default_image",
            "api",
            "git",
            "branch_prefix",
            "local_repos",
            "engines",
        ];
        if config_keys.iter().any(|k| has(k)) {
            return Some(FileKind::Config);
        }
    } else {
        return None;
    }
    match path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        Some("tasks") => Some(FileKind::Task),
        Some("blueprints") => Some(FileKind::Blueprint),
        _ => None,
    }
}

fn blueprint_dirs(task_path: &Path, config: Option<&ConfigInfo>) -> Vec<PathBuf> {
    if let Some(info) = config
        && let Some(config) = &info.config
    {
        return vec![info.dir.join(&config.blueprints_dir)];
    }
    let dir = task_path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut dirs = vec![dir.join("../blueprints"), dir.join("blueprints")];
    if let Ok(abs) = std::fs::canonicalize(dir)
        && let Some(parent) = abs.parent()
    {
        dirs[0] = parent.join("blueprints");
    }
    dirs
}

/// Where a task's `blueprint:` may be: a path relative to the task, or a name in a blueprints dir.
fn blueprint_candidates(task_path: &Path, name: &str, config: Option<&ConfigInfo>) -> Vec<PathBuf> {
    let task_dir = task_path.parent().unwrap_or(Path::new("."));
    if name.contains('/') || name.ends_with(".yaml") || name.ends_with(".yml") {
        return vec![task_dir.join(name)];
    }
    blueprint_dirs(task_path, config)
        .into_iter()
        .flat_map(|dir| {
            [
                dir.join(format!("{name}.yaml")),
                dir.join(format!("{name}.yml")),
            ]
        })
        .collect()
}

fn known_blueprints(dirs: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let ext = path.extension()?.to_str()?;
            matches!(ext, "yaml" | "yml").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn syntax_diagnostic(err: &yaml::SyntaxError, source: &str) -> Diagnostic {
    let message = &err.message;
    let (code, text, hint): (&str, String, Option<&str>) =
        if message.starts_with("duplicate mapping key") {
            let key = message
                .trim_start_matches("duplicate mapping key:")
                .split(',')
                .next()
                .unwrap_or("")
                .trim();
            (
                "duplicate-key",
                format!("duplicate key `{key}`"),
                Some("each key may appear once in a mapping"),
            )
        } else if message.contains("tabs disallowed") || message.contains("tab") {
            (
                "yaml-syntax",
                "tab character in indentation".to_owned(),
                Some("YAML indents with spaces only"),
            )
        } else if message.contains("budget breached")
            || message.contains("alias") && message.contains("limit")
        {
            (
                "too-complex",
                "refused: the document expands to too many nodes (an alias bomb?)".to_owned(),
                Some("configs need no more than a few thousand values; remove the nested aliases"),
            )
        } else if message.contains("unclosed quote") || message.contains("quoted scalar") {
            (
                "yaml-syntax",
                format!("YAML syntax error: {message}"),
                Some("close the quote on the same value"),
            )
        } else {
            ("yaml-syntax", format!("YAML syntax error: {message}"), None)
        };
    let mut d = Diagnostic::error(code, text).maybe_hint(hint.map(str::to_owned));
    if let Some(pos) = err.pos {
        let width = match code {
            "duplicate-key" => message
                .trim_start_matches("duplicate mapping key:")
                .split(',')
                .next()
                .map_or(1, |k| k.trim().chars().count()),
            "yaml-syntax" if message.contains("tab") => 1,
            _ => token_width(source, pos),
        };
        d = d.at(pos).width(width);
    }
    d
}

enum ReadProblem {
    Io(std::io::Error),
    TooLarge(u64),
}

fn read_limited(path: &Path) -> Result<Vec<u8>, ReadProblem> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(ReadProblem::Io)?;
    let meta = file.metadata().map_err(ReadProblem::Io)?;
    if meta.is_dir() {
        return Err(ReadProblem::Io(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadProblem::TooLarge(meta.len()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadProblem::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadProblem::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}

fn read_error(path: &Path, err: &std::io::Error) -> Diagnostic {
    let reason = match err.raw_os_error() {
        Some(40) => "too many levels of symbolic links (a symlink loop?)".to_owned(),
        _ => match err.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => err.to_string(),
        },
    };
    Diagnostic::error(
        "io-error",
        format!("cannot read `{}`: {reason}", path.display()),
    )
    .in_file(display_path(path))
}

/// Collects `*.yaml`/`*.yml` below `dir`, sorted, skipping hidden directories, run logs and
/// directories already seen (a symlink loop ends there).
fn collect_yaml(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
    depth: usize,
) -> Result<(), Box<Diagnostic>> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| Box::new(read_error(dir, &e)))?;
    if depth > 16 || !seen.insert(canonical) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Box::new(read_error(dir, &e)))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.')
            || name == "target"
            || name == "node_modules"
            || name.ends_with(".runs")
        {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => collect_yaml(&path, files, seen, depth + 1)?,
            Ok(_) => {
                if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                ) {
                    files.push(path);
                }
            }
            // A dangling link or a loop is a file the user asked about: let reading report it.
            Err(_)
                if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                ) =>
            {
                files.push(path)
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// How a path is shown in messages: relative to the current directory when it is below it.
pub fn display_path(path: &Path) -> String {
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            let abs = if path.is_absolute() {
                path.to_path_buf()
            } else {
                cwd.join(path)
            };
            let abs = normalize(&abs);
            abs.strip_prefix(&cwd).ok().map(Path::to_path_buf)
        })
        .unwrap_or_else(|| path.to_path_buf());
    shown.display().to_string()
}

/// Removes `.` and `a/..` without touching the file system (symlinks stay as written).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[allow(dead_code)]
fn _assert_types(_: Blueprint) {}
