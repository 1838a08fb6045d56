//! `maxions render`: what each step of a task would run, with placeholders for what only a run
//! can know (outputs of earlier steps, the failed checks of a fix round).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use super::{Output, exit};
use crate::config::blueprint::Draft;
use crate::config::diagnostic::{Styles, render as render_diagnostic};
use crate::config::load::{LoadedTask, load_task};
use crate::config::{Step, StepKind};
use crate::template::{Context, FailedCheck, Mode, RunInfo, TemplateError, Templates};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task file.
    #[arg(value_name = "TASK")]
    pub task: PathBuf,

    /// Only this step (by id).
    #[arg(long, value_name = "ID")]
    pub step: Option<String>,

    /// Use this blueprint file instead of the one the task names.
    #[arg(long, value_name = "FILE")]
    pub blueprint: Option<PathBuf>,
}

pub fn run(args: &Args, _output: Output) -> u8 {
    let loaded = match load_task(&args.task, args.blueprint.as_deref()) {
        Ok(loaded) => loaded,
        Err(validation) => {
            let styles = Styles::colored();
            let mut stderr = anstream::stderr().lock();
            for d in &validation.diagnostics {
                let source = validation.sources.get(&d.file).map(|s| &**s);
                let _ = writeln!(stderr, "{}", render_diagnostic(d, source, &styles));
            }
            return if validation.unreadable {
                exit::UNREADABLE
            } else {
                exit::INVALID
            };
        }
    };
    if let Some(id) = &args.step
        && !loaded
            .blueprint
            .steps
            .iter()
            .any(|s| s.id.as_deref() == Some(id))
    {
        let ids: Vec<&str> = loaded
            .blueprint
            .steps
            .iter()
            .filter_map(|s| s.id.as_deref())
            .collect();
        eprintln!(
            "error: the blueprint has no step `{id}`; its steps are: {}",
            ids.join(", ")
        );
        return exit::INVALID;
    }
    match render_task(&loaded, args.step.as_deref()) {
        Ok(text) => {
            print!("{text}");
            exit::OK
        }
        Err(message) => {
            eprintln!("error: {message}");
            exit::INVALID
        }
    }
}

/// Renders every step (or one) of a loaded task as text.
pub fn render_task(loaded: &LoadedTask, only: Option<&str>) -> Result<String, String> {
    let templates = Templates::new();
    let mut context = Context {
        task: loaded.task.task.clone(),
        repo: (&loaded.repo).into(),
        branch: loaded.branch.clone(),
        base: loaded
            .task
            .base
            .clone()
            .unwrap_or_else(|| "<default branch>".into()),
        vars: loaded.task.vars.clone(),
        steps: BTreeMap::new(),
        run: RunInfo {
            id: "<run id>".into(),
            failed_checks: 0,
        },
        failed: None,
    };
    let mut out = String::new();
    for (index, step) in loaded.blueprint.steps.iter().enumerate() {
        let label = step
            .id
            .clone()
            .unwrap_or_else(|| format!("step {}", index + 1));
        let selected = only.is_none_or(|id| step.id.as_deref() == Some(id));
        if selected {
            render_step(&templates, step, &label, &mut context, &mut out)
                .map_err(|e| format!("in step `{label}`: {e}"))?;
        }
        if let Some(id) = &step.id {
            let outputs = step
                .outputs
                .keys()
                .map(|name| (name.clone(), format!("<steps.{id}.{name}>")))
                .collect();
            context.steps.insert(id.clone(), outputs);
        }
    }
    Ok(out)
}

fn render_step(
    templates: &Templates,
    step: &Step,
    label: &str,
    context: &mut Context,
    out: &mut String,
) -> Result<(), TemplateError> {
    let Some(kind) = step.kind() else {
        return Ok(());
    };
    let name = kind.name();
    let _ = writeln!(out, "── {label} ({name})");
    if let Some(condition) = &step.condition {
        let _ = writeln!(out, "   if: {condition}");
    }
    let text =
        |source: &str, mode: Mode, context: &Context| templates.render(source, mode, context);
    match kind {
        StepKind::Checkout(_) => {
            let _ = writeln!(
                out,
                "   check out {} (base {}) at /workspace/repo on branch {}",
                context.repo.clone_url, context.base, context.branch
            );
        }
        StepKind::Run(source) => block(out, "sh -c", &text(source, Mode::Shell, context)?),
        StepKind::Agent(source) => block(out, "prompt", &text(source, Mode::Text, context)?),
        StepKind::Check(checks, fix) => {
            for check in checks {
                block(
                    out,
                    &format!("check {}: sh -c", check.id),
                    &text(&check.run, Mode::Shell, context)?,
                );
            }
            if let Some(fix) = fix {
                context.failed = Some(
                    checks
                        .iter()
                        .map(|c| FailedCheck {
                            id: c.id.clone(),
                            exit_code: 1,
                            output: format!("<output of check {}>", c.id),
                        })
                        .collect(),
                );
                let prompt = text(&fix.agent, Mode::Text, context);
                context.failed = None;
                block(
                    out,
                    &format!(
                        "fix prompt (up to {} rounds, as if every check failed)",
                        fix.max_rounds
                    ),
                    &prompt?,
                );
            }
        }
        StepKind::Commit(commit) => block(
            out,
            "commit message",
            &text(&commit.message, Mode::Text, context)?,
        ),
        StepKind::Push(_) => {
            let _ = writeln!(
                out,
                "   push branch {} to {}",
                context.branch, context.repo.clone_url
            );
        }
        StepKind::PullRequest(pr) => {
            block(out, "title", &text(&pr.title, Mode::Text, context)?);
            block(out, "body", &text(&pr.body, Mode::Text, context)?);
            let draft = match &pr.draft {
                Draft::Fixed(b) => b.to_string(),
                Draft::Template(t) => text(t, Mode::Text, context)?,
            };
            let _ = writeln!(out, "   draft: {draft}");
            if !pr.labels.is_empty() {
                let labels: Result<Vec<String>, _> = pr
                    .labels
                    .iter()
                    .map(|l| text(l, Mode::Text, context))
                    .collect();
                let _ = writeln!(out, "   labels: {}", labels?.join(", "));
            }
            if !pr.reviewers.is_empty() {
                let _ = writeln!(out, "   reviewers: {}", pr.reviewers.join(", "));
            }
        }
    }
    for (name, value) in &step.env {
        let _ = writeln!(out, "   env {name}={}", text(value, Mode::Text, context)?);
    }
    if !step.secrets.is_empty() {
        let names: Vec<&str> = step.secrets.iter().map(|s| s.0.as_str()).collect();
        let _ = writeln!(out, "   secrets: {}", names.join(", "));
    }
    let _ = writeln!(out);
    Ok(())
}

fn block(out: &mut String, title: &str, body: &str) {
    let _ = writeln!(out, "   {title}:");
    for line in body.lines() {
        let _ = writeln!(out, "   │ {line}");
    }
}
