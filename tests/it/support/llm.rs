//! A scripted LLM provider on 127.0.0.1 for the agent tests. One server speaks the three wire
//! protocols the real agent CLIs use — OpenAI chat completions (pi), OpenAI Responses (Codex) and
//! Anthropic Messages (Claude Code), each streamed as SSE with usage — and replays a per-test
//! script of turns, so that a run of a real CLI is deterministic and its token counts are known.
//!
//! ```ignore
//! let llm = ScriptedLlm::start([
//!     Turn::shell("echo hi > f.txt").tokens(100, 20),
//!     Turn::text("wrote f.txt").tokens(150, 10),
//! ]);
//! // point the agent at llm.openai_url() (".../v1") or llm.anthropic_url(), run it, then:
//! assert_eq!(llm.requests()[0].api_key(), Some("sk-test"));
//! assert_eq!(llm.unscripted(), 0);
//! ```
//!
//! Tool calls are written agent-neutrally: [`Action::Shell`] becomes a call of the shell tool the
//! request itself offers (pi's `bash {command}`, Claude Code's `Bash {command}`, Codex's
//! `exec_command {cmd}`), [`Action::WriteFile`] of its write tool, or of its shell tool when it
//! has none (Codex), so one script drives all three agents. When the script is used up the server
//! answers with the fallback turn (plain text "done", a normal stop) rather than leave an
//! unexpected request hanging, and counts those answers. Faults — HTTP errors with `Retry-After`,
//! a stream that breaks after a valid start, a stream that stalls — are turns like any other.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use super::server::Served;

/// A fixed `created` time in answers, so that recorded streams do not change between runs.
const CREATED: u64 = 1_764_547_200;

/// Which wire protocol a request spoke (chosen by its path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST …/chat/completions` (pi's `openai-completions` api).
    ChatCompletions,
    /// `POST …/responses` (Codex's `wire_api = "responses"`).
    Responses,
    /// `POST …/messages` (Claude Code, with `?beta=true`).
    Messages,
}

/// Something the model asks the agent to do, independent of the agent's tool names.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run a shell command with the shell tool the request offers.
    Shell(String),
    /// Write a file with the request's write tool; with its shell tool if it offers none.
    WriteFile { path: String, content: String },
    /// Call exactly this tool with exactly these arguments (no mapping).
    Tool { name: String, arguments: Value },
}

/// Token counts a reply reports. Every protocol is given the same numbers in its own shape:
/// OpenAI counts cached tokens inside the prompt (`prompt_tokens`/`input_tokens` =
/// `input + cached + cache_write`), Anthropic beside it (`input_tokens` = `input`,
/// `cache_read_input_tokens` = `cached`, `cache_creation_input_tokens` = `cache_write`).
/// `output` includes `reasoning`, as in both APIs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens that were neither read from nor written to a cache.
    pub input: u64,
    /// Prompt tokens read from the cache.
    pub cached: u64,
    /// Prompt tokens written to the cache (Anthropic; OpenRouter-style `cache_write_tokens`).
    pub cache_write: u64,
    pub output: u64,
    /// Of `output`, spent on reasoning (OpenAI only).
    pub reasoning: u64,
}

impl Usage {
    pub fn new(input: u64, output: u64) -> Self {
        Self {
            input,
            output,
            ..Self::default()
        }
    }

    #[must_use]
    pub fn cached(mut self, tokens: u64) -> Self {
        self.cached = tokens;
        self
    }

    #[must_use]
    pub fn cache_write(mut self, tokens: u64) -> Self {
        self.cache_write = tokens;
        self
    }

    #[must_use]
    pub fn reasoning(mut self, tokens: u64) -> Self {
        self.reasoning = tokens;
        self
    }

    /// All prompt tokens, as OpenAI counts them.
    pub fn prompt(&self) -> u64 {
        self.input + self.cached + self.cache_write
    }

    pub fn total(&self) -> u64 {
        self.prompt() + self.output
    }
}

/// Where a stalled answer stops sending (and then holds the connection until the server drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallAt {
    /// Read the request, send nothing, not even a status line.
    Request,
    /// Send `200` and the SSE headers, then no event.
    Headers,
    /// Send the headers and the protocol's opening events (`message_start`, `response.created`,
    /// the first chunk with the assistant role), then nothing.
    Start,
}

/// How a malformed answer breaks after a valid start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// An event whose data is not JSON, then the stream ends cleanly without its final events.
    Garbage,
    /// The connection is cut mid-stream (no closing chunk of the chunked body).
    Cut,
}

#[derive(Debug, Clone)]
enum Kind {
    Reply {
        text: Option<String>,
        actions: Vec<Action>,
        usage: Usage,
        truncated: bool,
    },
    Error {
        status: u16,
        headers: Vec<(String, String)>,
        message: String,
    },
    Malformed(Malformed),
    Stall(StallAt),
}

/// One answer of the script.
#[derive(Debug, Clone)]
pub struct Turn {
    kind: Kind,
    when: Option<String>,
    delay: Duration,
}

/// What a reply reports when a test gives no numbers.
pub const DEFAULT_USAGE: Usage = Usage {
    input: 100,
    cached: 0,
    cache_write: 0,
    output: 20,
    reasoning: 0,
};

impl Turn {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            when: None,
            delay: Duration::ZERO,
        }
    }

    fn reply(text: Option<String>, actions: Vec<Action>) -> Self {
        Self::new(Kind::Reply {
            text,
            actions,
            usage: DEFAULT_USAGE,
            truncated: false,
        })
    }

    /// A text answer that ends the agent's turn.
    pub fn text(text: &str) -> Self {
        Self::reply(Some(text.to_owned()), Vec::new())
    }

    /// A call of the request's shell tool.
    pub fn shell(command: &str) -> Self {
        Self::actions([Action::Shell(command.to_owned())])
    }

    /// A call of the request's write tool (or of its shell tool).
    pub fn write_file(path: &str, content: &str) -> Self {
        Self::actions([Action::WriteFile {
            path: path.to_owned(),
            content: content.to_owned(),
        }])
    }

    /// A call of the tool `name`, arguments as given.
    pub fn tool(name: &str, arguments: Value) -> Self {
        Self::actions([Action::Tool {
            name: name.to_owned(),
            arguments,
        }])
    }

    /// Several tool calls in one answer.
    pub fn actions(actions: impl IntoIterator<Item = Action>) -> Self {
        Self::reply(None, actions.into_iter().collect())
    }

    /// An HTTP error with the protocol's error body.
    pub fn error(status: u16) -> Self {
        let message = match status {
            429 => "scripted: rate limited",
            529 => "scripted: overloaded",
            _ => "scripted: provider error",
        };
        Self::new(Kind::Error {
            status,
            headers: Vec::new(),
            message: message.to_owned(),
        })
    }

    /// `429` with `Retry-After: seconds`.
    pub fn rate_limited(seconds: u64) -> Self {
        Self::error(429).header("retry-after", &seconds.to_string())
    }

    /// Anthropic's `529 overloaded_error`.
    pub fn overloaded() -> Self {
        Self::error(529)
    }

    /// A valid start, then a broken stream.
    pub fn malformed(how: Malformed) -> Self {
        Self::new(Kind::Malformed(how))
    }

    /// A valid start, then an event that is not JSON.
    pub fn garbage() -> Self {
        Self::malformed(Malformed::Garbage)
    }

    /// A valid start, then the connection is cut.
    pub fn cut() -> Self {
        Self::malformed(Malformed::Cut)
    }

    /// Headers and the opening events, then nothing until the server is dropped.
    pub fn stall() -> Self {
        Self::stall_at(StallAt::Start)
    }

    pub fn stall_at(at: StallAt) -> Self {
        Self::new(Kind::Stall(at))
    }

    /// Add text before the tool calls of a reply (or replace the text of a text reply).
    #[must_use]
    pub fn with_text(mut self, said: &str) -> Self {
        if let Kind::Reply { text, .. } = &mut self.kind {
            *text = Some(said.to_owned());
        }
        self
    }

    /// Add a tool call to a reply.
    #[must_use]
    pub fn and(mut self, action: Action) -> Self {
        if let Kind::Reply { actions, .. } = &mut self.kind {
            actions.push(action);
        }
        self
    }

    /// The usage a reply reports (default [`DEFAULT_USAGE`]).
    #[must_use]
    pub fn usage(mut self, counted: Usage) -> Self {
        if let Kind::Reply { usage, .. } = &mut self.kind {
            *usage = counted;
        }
        self
    }

    /// Shorthand for `usage(Usage::new(input, output))`.
    #[must_use]
    pub fn tokens(self, input: u64, output: u64) -> Self {
        self.usage(Usage::new(input, output))
    }

    /// The reply stops at the output limit (`length`, `max_tokens`, `incomplete`).
    #[must_use]
    pub fn truncated(mut self) -> Self {
        if let Kind::Reply { truncated, .. } = &mut self.kind {
            *truncated = true;
        }
        self
    }

    /// An extra header on an error answer (e.g. `retry-after-ms`, `x-should-retry`).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Kind::Error { headers, .. } = &mut self.kind {
            headers.push((name.to_ascii_lowercase(), value.to_owned()));
        }
        self
    }

    /// The message of an error answer.
    #[must_use]
    pub fn message(mut self, text: &str) -> Self {
        if let Kind::Error { message, .. } = &mut self.kind {
            text.clone_into(message);
        }
        self
    }

    /// Answer only a request whose last message (prompt, tool result) contains `needle`.
    /// Turns are taken in order; a turn waiting for its request lets later turns go first.
    #[must_use]
    pub fn when_last_message_contains(mut self, needle: &str) -> Self {
        self.when = Some(needle.to_owned());
        self
    }

    /// Wait this long before answering (before the status line).
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// How the server answered a recorded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// With the script's turn of this index (0-based, as given to the builder).
    Turn(usize),
    /// With the fallback turn: the script was used up (or no turn's condition held).
    Fallback,
    /// A helper route (`count_tokens`, `models`).
    Helper,
    /// `400`: the turn wants a tool the request does not offer.
    Refused(String),
    /// `404`: not a route the server knows.
    NotFound,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Lowercased names, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`None` when empty or not JSON).
    pub body: Option<Value>,
    pub protocol: Option<Protocol>,
    pub answer: Answer,
    /// When it arrived, for measuring an agent's retry delays.
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The key the agent sent: `Authorization: Bearer K` (OpenAI) or `x-api-key: K` (Anthropic).
    pub fn api_key(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| self.header("x-api-key"))
    }

    pub fn model(&self) -> Option<&str> {
        self.body.as_ref()?.get("model")?.as_str()
    }

    /// Whether the request asked for an SSE stream.
    pub fn streamed(&self) -> bool {
        self.body
            .as_ref()
            .and_then(|b| b.get("stream"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The names of the tools the request offers.
    pub fn tool_names(&self) -> Vec<String> {
        self.body
            .as_ref()
            .map(|body| offered_tools(body).into_iter().map(|t| t.name).collect())
            .unwrap_or_default()
    }

    /// Every string in the request's last message (or input item), joined by newlines: the
    /// prompt, or the output of the tool the agent just ran.
    pub fn last_message_text(&self) -> String {
        self.body
            .as_ref()
            .and_then(last_message)
            .map(|message| {
                let mut out = Vec::new();
                strings(message, &mut out);
                out.join("\n")
            })
            .unwrap_or_default()
    }
}

/// A running scripted LLM. Dropping it stops the server and ends every held (stalled) answer.
pub struct ScriptedLlm {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    _served: Served,
}

pub struct ScriptedLlmBuilder {
    turns: Vec<Turn>,
    fallback: Turn,
}

impl ScriptedLlmBuilder {
    #[must_use]
    pub fn turn(mut self, turn: Turn) -> Self {
        self.turns.push(turn);
        self
    }

    #[must_use]
    pub fn turns(mut self, turns: impl IntoIterator<Item = Turn>) -> Self {
        self.turns.extend(turns);
        self
    }

    /// How to answer once the script is used up (default: `Turn::text("done")`). E.g.
    /// `Turn::error(500)` for "the provider fails until the agent gives up".
    #[must_use]
    pub fn fallback(mut self, turn: Turn) -> Self {
        self.fallback = turn;
        self
    }

    pub fn start(self) -> ScriptedLlm {
        let state = Arc::new(Mutex::new(State {
            script_len: self.turns.len(),
            pending: self.turns.into_iter().enumerate().collect(),
            fallback: self.fallback,
            requests: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let served = Served::start(move |_| Router::new().fallback(handle).with_state(shared));
        ScriptedLlm {
            addr: served.addr,
            state,
            _served: served,
        }
    }
}

impl ScriptedLlm {
    pub fn builder() -> ScriptedLlmBuilder {
        ScriptedLlmBuilder {
            turns: Vec::new(),
            fallback: Turn::text("done"),
        }
    }

    /// A server replaying `turns`, then answering "done".
    pub fn start(turns: impl IntoIterator<Item = Turn>) -> Self {
        Self::builder().turns(turns).start()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: Claude Code's `ANTHROPIC_BASE_URL`.
    pub fn anthropic_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`: pi's `baseUrl`, Codex's `base_url`.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Append turns to the script while it runs.
    pub fn push(&self, turn: Turn) {
        let mut state = self.state.lock().unwrap();
        let index = state.script_len;
        state.script_len += 1;
        state.pending.push((index, turn));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests that spoke a model protocol (not helper routes, not unknown paths).
    pub fn model_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.protocol.is_some())
            .collect()
    }

    /// How many requests were answered with the fallback turn.
    pub fn unscripted(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.answer == Answer::Fallback)
            .count()
    }

    /// How many turns of the script are still waiting for their request.
    pub fn remaining(&self) -> usize {
        self.state.lock().unwrap().pending.len()
    }

    /// Waits until `count` requests arrived; false after `timeout`.
    pub fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state.lock().unwrap().requests.len() >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

struct State {
    /// Turns not yet used, with their index in the script.
    pending: Vec<(usize, Turn)>,
    /// How many turns the script has had, the index of the next pushed one.
    script_len: usize,
    fallback: Turn,
    requests: Vec<Recorded>,
}

/// A tool as the request offers it, whatever the protocol.
struct OfferedTool {
    name: String,
    /// The JSON schema of its arguments.
    schema: Value,
}

fn offered_tools(body: &Value) -> Vec<OfferedTool> {
    let Some(tools) = body.get("tools").and_then(Value::as_array) else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|tool| {
            // chat completions: {type: function, function: {name, parameters}}; Responses:
            // {type: function, name, parameters}; Anthropic: {name, input_schema}.
            let inner = tool.get("function").unwrap_or(tool);
            let name = inner.get("name")?.as_str()?.to_owned();
            let schema = inner
                .get("parameters")
                .or_else(|| inner.get("input_schema"))
                .cloned()
                .unwrap_or(Value::Null);
            Some(OfferedTool { name, schema })
        })
        .collect()
}

fn last_message(body: &Value) -> Option<&Value> {
    match body.get("messages").or_else(|| body.get("input"))? {
        Value::Array(items) => items.last(),
        text @ Value::String(_) => Some(text),
        _ => None,
    }
}

fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| {
                !matches!(
                    key.as_str(),
                    "id" | "type" | "role" | "call_id" | "tool_call_id" | "tool_use_id"
                )
            })
            .for_each(|(_, v)| strings(v, out)),
        _ => {}
    }
}

/// Shell tools of the known agents, in order of preference.
const SHELL_TOOLS: &[&str] = &[
    "bash",
    "exec_command",
    "shell_command",
    "shell",
    "run_shell_command",
];
const WRITE_TOOLS: &[&str] = &["write", "write_file", "create_file"];

fn find_tool<'a>(tools: &'a [OfferedTool], names: &[&str]) -> Option<&'a OfferedTool> {
    names.iter().find_map(|wanted| {
        tools
            .iter()
            .find(|tool| tool.name.eq_ignore_ascii_case(wanted))
    })
}

fn property<'a>(tool: &OfferedTool, names: &[&'a str]) -> Option<(&'a str, Option<String>)> {
    let properties = tool.schema.get("properties")?;
    names.iter().find_map(|name| {
        let schema = properties.get(*name)?;
        let kind = schema
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some((*name, kind))
    })
}

fn tool_list(tools: &[OfferedTool]) -> String {
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// A tool call as the request's own tools spell it.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    arguments: Value,
}

fn shell_call(tools: &[OfferedTool], command: &str) -> Result<Call, String> {
    let tool = find_tool(tools, SHELL_TOOLS).ok_or_else(|| {
        format!(
            "the script wants a shell command but the request offers no shell tool (tools: {})",
            tool_list(tools)
        )
    })?;
    let (key, kind) = property(tool, &["command", "cmd"]).ok_or_else(|| {
        format!(
            "the shell tool `{}` has neither a `command` nor a `cmd` argument",
            tool.name
        )
    })?;
    // Older Codex shells take argv (`{"command": ["bash", "-lc", "…"]}`).
    let value = if kind.as_deref() == Some("array") {
        json!(["bash", "-lc", command])
    } else {
        json!(command)
    };
    Ok(Call {
        name: tool.name.clone(),
        arguments: json!({ key: value }),
    })
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn write_call(tools: &[OfferedTool], path: &str, content: &str) -> Result<Call, String> {
    if let Some(tool) = find_tool(tools, WRITE_TOOLS)
        && let Some((path_key, _)) = property(tool, &["file_path", "path", "filePath", "filename"])
        && let Some((content_key, _)) = property(tool, &["content", "contents", "text"])
    {
        return Ok(Call {
            name: tool.name.clone(),
            arguments: json!({ path_key: path, content_key: content }),
        });
    }
    let command = format!(
        "mkdir -p \"$(dirname {path})\" && printf '%s' {content} > {path}",
        path = shell_quote(path),
        content = shell_quote(content),
    );
    shell_call(tools, &command).map_err(|_| {
        format!(
            "the script wants a file written but the request offers neither a write nor a shell tool (tools: {})",
            tool_list(tools)
        )
    })
}

fn resolve(tools: &[OfferedTool], actions: &[Action]) -> Result<Vec<Call>, String> {
    actions
        .iter()
        .map(|action| match action {
            Action::Shell(command) => shell_call(tools, command),
            Action::WriteFile { path, content } => write_call(tools, path, content),
            Action::Tool { name, arguments } => Ok(Call {
                name: name.clone(),
                arguments: arguments.clone(),
            }),
        })
        .collect()
}

/// A reply resolved for one request.
struct Message {
    /// The request's number (1-based), making ids unique and stable.
    n: usize,
    model: String,
    text: Option<String>,
    calls: Vec<Call>,
    usage: Usage,
    truncated: bool,
}

/// One piece of an answer's body.
enum Piece {
    Data(Bytes),
    /// Hold the connection open until the server is dropped.
    Stall,
    /// End the body with an error: hyper then cuts the connection.
    Cut,
}

async fn handle(
    AxumState(state): AxumState<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let protocol = if method != Method::POST {
        None
    } else if path.ends_with("/chat/completions") {
        Some(Protocol::ChatCompletions)
    } else if path.ends_with("/responses") {
        Some(Protocol::Responses)
    } else if path.ends_with("/messages") {
        Some(Protocol::Messages)
    } else {
        None
    };
    let mut record = Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: parsed.clone(),
        protocol,
        answer: Answer::NotFound,
        at: Instant::now(),
    };

    let Some(protocol) = protocol else {
        let response = helper_route(&method, &path, parsed.as_ref());
        record.answer = if response.status() == StatusCode::NOT_FOUND {
            Answer::NotFound
        } else {
            Answer::Helper
        };
        state.lock().unwrap().requests.push(record);
        return response;
    };

    let body = parsed.unwrap_or(Value::Null);
    let (n, turn) = {
        let mut state = state.lock().unwrap();
        let last = record.last_message_text();
        let position = state.pending.iter().position(|(_, turn)| {
            turn.when
                .as_ref()
                .is_none_or(|needle| last.contains(needle.as_str()))
        });
        let (answer, turn) = match position {
            Some(position) => {
                let (index, turn) = state.pending.remove(position);
                (Answer::Turn(index), turn)
            }
            None => (Answer::Fallback, state.fallback.clone()),
        };
        record.answer = answer;
        state.requests.push(record);
        (state.requests.len(), turn)
    };

    if !turn.delay.is_zero() {
        tokio::time::sleep(turn.delay).await;
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("scripted-model")
        .to_owned();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    match turn.kind {
        Kind::Reply {
            text,
            actions,
            usage,
            truncated,
        } => {
            let calls = match resolve(&offered_tools(&body), &actions) {
                Ok(calls) => calls,
                Err(reason) => {
                    let mut state = state.lock().unwrap();
                    if let Some(record) = state.requests.get_mut(n - 1) {
                        record.answer = Answer::Refused(reason.clone());
                    }
                    return error_response(protocol, 400, &[], &format!("scripted LLM: {reason}"));
                }
            };
            let message = Message {
                n,
                model,
                text,
                calls,
                usage,
                truncated,
            };
            if stream {
                let include_usage = body
                    .pointer("/stream_options/include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let mut pieces = start_events(protocol, &message);
                pieces.extend(rest_events(protocol, &message, include_usage));
                piecewise(true, pieces)
            } else {
                json_response(StatusCode::OK, &whole(protocol, &message))
            }
        }
        Kind::Error {
            status,
            headers,
            message,
        } => error_response(protocol, status, &headers, &message),
        Kind::Malformed(how) => {
            let message = Message::empty(n, model);
            let mut pieces = opening(protocol, &message, stream);
            pieces.push(match (how, stream) {
                (Malformed::Garbage, true) => Piece::Data(Bytes::from_static(
                    b"data: {\"this is not\": json at all\n\n",
                )),
                (Malformed::Garbage, false) => {
                    Piece::Data(Bytes::from_static(b" this is not json at all"))
                }
                (Malformed::Cut, _) => Piece::Cut,
            });
            piecewise(stream, pieces)
        }
        Kind::Stall(StallAt::Request) => std::future::pending::<Response>().await,
        Kind::Stall(StallAt::Headers) => piecewise(stream, vec![Piece::Stall]),
        Kind::Stall(StallAt::Start) => {
            let message = Message::empty(n, model);
            let mut pieces = opening(protocol, &message, stream);
            pieces.push(Piece::Stall);
            piecewise(stream, pieces)
        }
    }
}

/// What a client receives first: the protocol's opening events, or for a whole-JSON answer the
/// first bytes of its object.
fn opening(protocol: Protocol, message: &Message, stream: bool) -> Vec<Piece> {
    if stream {
        start_events(protocol, message)
    } else {
        let id = format!("{{\"id\":\"scripted-{}\",", message.n);
        vec![Piece::Data(Bytes::from(id))]
    }
}

fn helper_route(method: &Method, path: &str, body: Option<&Value>) -> Response {
    if method == Method::HEAD {
        // Claude Code checks that its base URL answers before the first request.
        return Response::builder()
            .status(StatusCode::OK)
            .body(Body::empty())
            .expect("a valid response");
    }
    if method == Method::POST && path.ends_with("/messages/count_tokens") {
        // A rough count, enough for a client that only wants a number.
        let size = body.map_or(0, |b| b.to_string().len());
        return json_response(StatusCode::OK, &json!({ "input_tokens": size / 4 }));
    }
    if method == Method::GET && path.ends_with("/models") {
        return json_response(
            StatusCode::OK,
            &json!({ "object": "list", "data": [{ "id": "scripted-model", "object": "model", "created": CREATED, "owned_by": "scripted" }] }),
        );
    }
    json_response(
        StatusCode::NOT_FOUND,
        &json!({ "error": { "type": "not_found_error", "message": format!("scripted LLM: no route {method} {path}") } }),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

fn error_response(
    protocol: Protocol,
    status: u16,
    headers: &[(String, String)],
    message: &str,
) -> Response {
    let body = match protocol {
        Protocol::Messages => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                _ => "api_error",
            };
            json!({ "type": "error", "error": { "type": kind, "message": message } })
        }
        Protocol::ChatCompletions | Protocol::Responses => {
            let (kind, code) = match status {
                400 => ("invalid_request_error", Value::Null),
                429 => ("rate_limit_error", json!("rate_limit_exceeded")),
                _ => ("server_error", Value::Null),
            };
            json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
        }
    };
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

/// A `200` whose body is sent piece by piece: SSE when the request asked for a stream, JSON
/// otherwise.
fn piecewise(stream: bool, pieces: Vec<Piece>) -> Response {
    let body = futures_util::stream::unfold(pieces.into_iter(), |mut pieces| async move {
        match pieces.next()? {
            Piece::Data(bytes) => Some((Ok(bytes), pieces)),
            Piece::Stall => {
                std::future::pending::<()>().await;
                None
            }
            Piece::Cut => {
                // Let hyper flush what came before, or the client would see no start at all.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Err(std::io::Error::other("scripted cut")), pieces))
            }
        }
    });
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .expect("a valid response")
}

/// `event: NAME` + `data: JSON` (Anthropic, Responses), or `data: JSON` alone (chat).
fn event(name: Option<&str>, data: &Value) -> Piece {
    let text = match name {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    };
    Piece::Data(Bytes::from(text))
}

/// `text` in two pieces (at a char boundary), so that clients must join deltas.
fn halves(text: &str) -> Vec<&str> {
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle -= 1;
    }
    let (a, b) = text.split_at(middle);
    [a, b].into_iter().filter(|s| !s.is_empty()).collect()
}

fn chat_usage(usage: &Usage) -> Value {
    let mut details = json!({ "cached_tokens": usage.cached });
    if usage.cache_write > 0 {
        // OpenRouter's convention, which pi reads: cached_tokens then includes the writes.
        details = json!({
            "cached_tokens": usage.cached + usage.cache_write,
            "cache_write_tokens": usage.cache_write,
        });
    }
    json!({
        "prompt_tokens": usage.prompt(),
        "completion_tokens": usage.output,
        "total_tokens": usage.total(),
        "prompt_tokens_details": details,
        "completion_tokens_details": { "reasoning_tokens": usage.reasoning },
    })
}

fn responses_usage(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt(),
        "input_tokens_details": { "cached_tokens": usage.cached },
        "output_tokens": usage.output,
        "output_tokens_details": { "reasoning_tokens": usage.reasoning },
        "total_tokens": usage.total(),
    })
}

fn anthropic_usage(usage: &Usage, output: u64) -> Value {
    json!({
        "input_tokens": usage.input,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cached,
        "output_tokens": output,
    })
}

impl Message {
    /// The message of a fault: its opening events only.
    fn empty(n: usize, model: String) -> Self {
        Self {
            n,
            model,
            text: None,
            calls: Vec::new(),
            usage: Usage::default(),
            truncated: false,
        }
    }

    fn chat_id(&self) -> String {
        format!("chatcmpl-scripted-{}", self.n)
    }

    fn call_id(&self, i: usize) -> String {
        format!("call_scripted_{}_{i}", self.n)
    }

    fn arguments(call: &Call) -> String {
        call.arguments.to_string()
    }

    fn chat_chunk(&self, delta: &Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.chat_id(),
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    }

    fn chat_finish(&self) -> &'static str {
        if self.truncated {
            "length"
        } else if self.calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
    }

    fn anthropic_stop(&self) -> &'static str {
        if self.truncated {
            "max_tokens"
        } else if self.calls.is_empty() {
            "end_turn"
        } else {
            "tool_use"
        }
    }

    fn anthropic_content(&self) -> Vec<Value> {
        let mut content = Vec::new();
        if let Some(text) = &self.text {
            content.push(json!({ "type": "text", "text": text }));
        }
        for (i, call) in self.calls.iter().enumerate() {
            content.push(json!({
                "type": "tool_use",
                "id": format!("toolu_scripted_{}_{i}", self.n),
                "name": call.name,
                "input": call.arguments,
            }));
        }
        content
    }

    fn responses_items(&self) -> Vec<Value> {
        let mut items = Vec::new();
        if let Some(text) = &self.text {
            items.push(json!({
                "id": format!("msg_scripted_{}", self.n),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{ "type": "output_text", "text": text, "annotations": [] }],
            }));
        }
        for (i, call) in self.calls.iter().enumerate() {
            items.push(json!({
                "id": format!("fc_scripted_{}_{i}", self.n),
                "type": "function_call",
                "status": "completed",
                "call_id": self.call_id(i),
                "name": call.name,
                "arguments": Self::arguments(call),
            }));
        }
        items
    }

    fn response_object(&self, status: &str, output: &[Value], usage: Option<&Usage>) -> Value {
        let mut response = json!({
            "id": format!("resp_scripted_{}", self.n),
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "model": self.model,
            "output": output,
            "usage": usage.map(responses_usage),
        });
        if status == "incomplete" {
            response["incomplete_details"] = json!({ "reason": "max_output_tokens" });
        }
        response
    }
}

/// A whole (non-streamed) answer.
fn whole(protocol: Protocol, message: &Message) -> Value {
    match protocol {
        Protocol::ChatCompletions => {
            let tool_calls: Vec<Value> = message
                .calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    json!({
                        "id": message.call_id(i),
                        "type": "function",
                        "function": { "name": call.name, "arguments": Message::arguments(call) },
                    })
                })
                .collect();
            let mut reply = json!({ "role": "assistant", "content": message.text });
            if !tool_calls.is_empty() {
                reply["tool_calls"] = json!(tool_calls);
            }
            json!({
                "id": message.chat_id(),
                "object": "chat.completion",
                "created": CREATED,
                "model": message.model,
                "choices": [{ "index": 0, "message": reply, "finish_reason": message.chat_finish() }],
                "usage": chat_usage(&message.usage),
            })
        }
        Protocol::Responses => {
            let status = if message.truncated {
                "incomplete"
            } else {
                "completed"
            };
            message.response_object(status, &message.responses_items(), Some(&message.usage))
        }
        Protocol::Messages => json!({
            "id": format!("msg_scripted_{}", message.n),
            "type": "message",
            "role": "assistant",
            "model": message.model,
            "content": message.anthropic_content(),
            "stop_reason": message.anthropic_stop(),
            "stop_sequence": null,
            "usage": anthropic_usage(&message.usage, message.usage.output),
        }),
    }
}

/// The opening events of a stream: what a client sees before any content.
fn start_events(protocol: Protocol, message: &Message) -> Vec<Piece> {
    match protocol {
        Protocol::ChatCompletions => vec![event(
            None,
            &message.chat_chunk(&json!({ "role": "assistant", "content": "" }), None),
        )],
        Protocol::Responses => {
            let response = message.response_object("in_progress", &[], None);
            vec![
                event(
                    Some("response.created"),
                    &json!({ "type": "response.created", "sequence_number": 0, "response": response }),
                ),
                event(
                    Some("response.in_progress"),
                    &json!({ "type": "response.in_progress", "sequence_number": 1, "response": response }),
                ),
            ]
        }
        Protocol::Messages => vec![
            event(
                Some("message_start"),
                &json!({
                    "type": "message_start",
                    "message": {
                        "id": format!("msg_scripted_{}", message.n),
                        "type": "message",
                        "role": "assistant",
                        "model": message.model,
                        "content": [],
                        "stop_reason": null,
                        "stop_sequence": null,
                        // As the real API: the input counts now, output so far (one token).
                        "usage": anthropic_usage(&message.usage, message.usage.output.min(1)),
                    },
                }),
            ),
            event(Some("ping"), &json!({ "type": "ping" })),
        ],
    }
}

/// The events after the start: content, tool calls, the stop and usage.
fn rest_events(protocol: Protocol, message: &Message, include_usage: bool) -> Vec<Piece> {
    let mut out = Vec::new();
    match protocol {
        Protocol::ChatCompletions => {
            if let Some(text) = &message.text {
                for piece in halves(text) {
                    out.push(event(
                        None,
                        &message.chat_chunk(&json!({ "content": piece }), None),
                    ));
                }
            }
            for (i, call) in message.calls.iter().enumerate() {
                out.push(event(
                    None,
                    &message.chat_chunk(
                        &json!({ "tool_calls": [{
                            "index": i,
                            "id": message.call_id(i),
                            "type": "function",
                            "function": { "name": call.name, "arguments": "" },
                        }] }),
                        None,
                    ),
                ));
                for piece in halves(&Message::arguments(call)) {
                    out.push(event(
                        None,
                        &message.chat_chunk(
                            &json!({ "tool_calls": [{ "index": i, "function": { "arguments": piece } }] }),
                            None,
                        ),
                    ));
                }
            }
            out.push(event(
                None,
                &message.chat_chunk(&json!({}), Some(message.chat_finish())),
            ));
            if include_usage {
                out.push(event(
                    None,
                    &json!({
                        "id": message.chat_id(),
                        "object": "chat.completion.chunk",
                        "created": CREATED,
                        "model": message.model,
                        "choices": [],
                        "usage": chat_usage(&message.usage),
                    }),
                ));
            }
            out.push(Piece::Data(Bytes::from_static(b"data: [DONE]\n\n")));
        }
        Protocol::Responses => {
            let mut seq = 2u64;
            let mut next = || {
                seq += 1;
                seq - 1
            };
            let items = message.responses_items();
            for (index, item) in items.iter().enumerate() {
                let id = item["id"].clone();
                let mut added = item.clone();
                added["status"] = json!("in_progress");
                if item["type"] == "message" {
                    added["content"] = json!([]);
                } else {
                    added["arguments"] = json!("");
                }
                out.push(event(
                    Some("response.output_item.added"),
                    &json!({ "type": "response.output_item.added", "sequence_number": next(), "output_index": index, "item": added }),
                ));
                if item["type"] == "message" {
                    let text = item["content"][0]["text"].as_str().unwrap_or_default();
                    out.push(event(
                        Some("response.content_part.added"),
                        &json!({ "type": "response.content_part.added", "sequence_number": next(), "item_id": id, "output_index": index, "content_index": 0, "part": { "type": "output_text", "text": "", "annotations": [] } }),
                    ));
                    for piece in halves(text) {
                        out.push(event(
                            Some("response.output_text.delta"),
                            &json!({ "type": "response.output_text.delta", "sequence_number": next(), "item_id": id, "output_index": index, "content_index": 0, "delta": piece }),
                        ));
                    }
                    out.push(event(
                        Some("response.output_text.done"),
                        &json!({ "type": "response.output_text.done", "sequence_number": next(), "item_id": id, "output_index": index, "content_index": 0, "text": text }),
                    ));
                    out.push(event(
                        Some("response.content_part.done"),
                        &json!({ "type": "response.content_part.done", "sequence_number": next(), "item_id": id, "output_index": index, "content_index": 0, "part": item["content"][0] }),
                    ));
                } else {
                    let arguments = item["arguments"].as_str().unwrap_or_default();
                    for piece in halves(arguments) {
                        out.push(event(
                            Some("response.function_call_arguments.delta"),
                            &json!({ "type": "response.function_call_arguments.delta", "sequence_number": next(), "item_id": id, "output_index": index, "delta": piece }),
                        ));
                    }
                    out.push(event(
                        Some("response.function_call_arguments.done"),
                        &json!({ "type": "response.function_call_arguments.done", "sequence_number": next(), "item_id": id, "output_index": index, "arguments": arguments }),
                    ));
                }
                out.push(event(
                    Some("response.output_item.done"),
                    &json!({ "type": "response.output_item.done", "sequence_number": next(), "output_index": index, "item": item }),
                ));
            }
            let (name, status) = if message.truncated {
                ("response.incomplete", "incomplete")
            } else {
                ("response.completed", "completed")
            };
            out.push(event(
                Some(name),
                &json!({ "type": name, "sequence_number": next(), "response": message.response_object(status, &items, Some(&message.usage)) }),
            ));
        }
        Protocol::Messages => {
            for (index, block) in message.anthropic_content().iter().enumerate() {
                let (start, deltas) = if block["type"] == "text" {
                    let text = block["text"].as_str().unwrap_or_default();
                    let deltas: Vec<Value> = halves(text)
                        .into_iter()
                        .map(|piece| json!({ "type": "text_delta", "text": piece }))
                        .collect();
                    (json!({ "type": "text", "text": "" }), deltas)
                } else {
                    let input = block["input"].to_string();
                    let deltas: Vec<Value> = halves(&input)
                        .into_iter()
                        .map(|piece| json!({ "type": "input_json_delta", "partial_json": piece }))
                        .collect();
                    let mut start = block.clone();
                    start["input"] = json!({});
                    (start, deltas)
                };
                out.push(event(
                    Some("content_block_start"),
                    &json!({ "type": "content_block_start", "index": index, "content_block": start }),
                ));
                for delta in deltas {
                    out.push(event(
                        Some("content_block_delta"),
                        &json!({ "type": "content_block_delta", "index": index, "delta": delta }),
                    ));
                }
                out.push(event(
                    Some("content_block_stop"),
                    &json!({ "type": "content_block_stop", "index": index }),
                ));
            }
            out.push(event(
                Some("message_delta"),
                &json!({
                    "type": "message_delta",
                    "delta": { "stop_reason": message.anthropic_stop(), "stop_sequence": null },
                    "usage": anthropic_usage(&message.usage, message.usage.output),
                }),
            ));
            out.push(event(
                Some("message_stop"),
                &json!({ "type": "message_stop" }),
            ));
        }
    }
    out
}

/// The `event:` names of an SSE text, in order, for tests that check a stream's shape.
pub fn event_names(sse: &str) -> Vec<String> {
    sse.lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .map(str::to_owned)
        .collect()
}
