//! The scripted LLM server over real HTTP on 127.0.0.1: each protocol's stream shape and usage,
//! tool calls mapped to the tools a request offers, the faults (429 with `Retry-After`, 500,
//! malformed and stalled streams), the fallback once the script is used up, and the record of
//! requests. A small HTTP/1.1 client over `std::net::TcpStream` stands in for the agents, so
//! these tests need no agent CLI.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::llm::{
    Action, Answer, Protocol, ScriptedLlm, StallAt, Turn, Usage, event_names,
};

/// An HTTP answer as a client saw it.
#[derive(Debug)]
struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// The body ended as HTTP says it must (last chunk, or `Content-Length` bytes).
    complete: bool,
    /// The read timed out with the connection still open.
    timed_out: bool,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The JSON `data:` of every SSE event (not `[DONE]`).
    fn events(&self) -> Vec<Value> {
        self.body
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}")))
            .collect()
    }
}

fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Http {
    post_within(addr, path, headers, body, Duration::from_secs(10))
}

/// POSTs `body` with `Connection: close` and reads until the server closes, the body is
/// complete, or `timeout` passes without a byte.
fn post_within(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
    timeout: Duration,
) -> Http {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let body = body.to_string();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).expect("send");

    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut timed_out = false;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                timed_out = true;
                break;
            }
            // A cut connection (reset): what was read so far is the answer.
            Err(_) => break,
        }
    }
    parse_http(&raw, timed_out)
}

fn parse_http(raw: &[u8], timed_out: bool) -> Http {
    let text = String::from_utf8_lossy(raw).into_owned();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return Http {
            status: 0,
            headers: Vec::new(),
            body: String::new(),
            complete: false,
            timed_out,
        };
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let (body, complete) = if chunked {
        dechunk(rest)
    } else {
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        (rest.to_owned(), length.is_none_or(|l| l == rest.len()))
    };
    Http {
        status,
        headers,
        body,
        complete,
        timed_out,
    }
}

/// Joins a chunked body; complete when the last (empty) chunk arrived.
fn dechunk(mut rest: &str) -> (String, bool) {
    let mut body = String::new();
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return (body, false);
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return (body, false);
        };
        if size == 0 {
            return (body, true);
        }
        if after.len() < size {
            body.push_str(after);
            return (body, false);
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// pi's request: chat completions, its four tools.
fn pi_request() -> Value {
    json!({
        "model": "fake-model",
        "stream": true,
        "stream_options": { "include_usage": true },
        "messages": [
            { "role": "system", "content": "You are pi." },
            { "role": "user", "content": [{ "type": "text", "text": "write hi to f.txt" }] },
        ],
        "tools": [
            { "type": "function", "function": { "name": "read", "parameters": { "type": "object", "properties": { "path": { "type": "string" } } } } },
            { "type": "function", "function": { "name": "bash", "parameters": { "type": "object", "properties": { "command": { "type": "string" }, "timeout": { "type": "number" } } } } },
            { "type": "function", "function": { "name": "write", "parameters": { "type": "object", "properties": { "path": { "type": "string" }, "content": { "type": "string" } } } } },
        ],
    })
}

/// Codex's request: Responses, `exec_command {cmd}` and no write tool.
fn codex_request() -> Value {
    json!({
        "model": "fake-model",
        "stream": true,
        "input": [
            { "type": "message", "role": "developer", "content": [{ "type": "input_text", "text": "You are Codex." }] },
            { "type": "message", "role": "user", "content": [{ "type": "input_text", "text": "write hi to f.txt" }] },
        ],
        "tools": [
            { "type": "function", "name": "exec_command", "parameters": { "type": "object", "properties": { "cmd": { "type": "string" }, "workdir": { "type": "string" } }, "required": ["cmd"] } },
            { "type": "function", "name": "view_image", "parameters": { "type": "object", "properties": { "path": { "type": "string" } } } },
            { "type": "web_search" },
        ],
    })
}

/// Claude Code's request: Messages, `Bash {command}` and `Write {file_path, content}`.
fn claude_request() -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "stream": true,
        "max_tokens": 32000,
        "system": [{ "type": "text", "text": "You are Claude Code." }],
        "messages": [
            { "role": "user", "content": [{ "type": "text", "text": "write hi to f.txt" }] },
        ],
        "tools": [
            { "name": "Bash", "input_schema": { "type": "object", "properties": { "command": { "type": "string" }, "description": { "type": "string" } }, "required": ["command"] } },
            { "name": "Write", "input_schema": { "type": "object", "properties": { "file_path": { "type": "string" }, "content": { "type": "string" } }, "required": ["file_path", "content"] } },
        ],
    })
}

const CHAT: &str = "/v1/chat/completions";
const RESPONSES: &str = "/v1/responses";
const MESSAGES: &str = "/v1/messages?beta=true";

/// The text and tool calls (name, parsed arguments) a chat completions stream carries.
fn chat_assembled(events: &[Value]) -> (String, Vec<(String, Value)>, Option<String>) {
    let mut text = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = None;
    for event in events {
        let Some(choice) = event["choices"].get(0) else {
            continue;
        };
        if let Some(piece) = choice["delta"]["content"].as_str() {
            text.push_str(piece);
        }
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = usize::try_from(call["index"].as_u64().unwrap()).unwrap();
            if calls.len() <= index {
                calls.push((String::new(), String::new()));
            }
            if let Some(name) = call["function"]["name"].as_str() {
                calls[index].0 = name.to_owned();
            }
            if let Some(piece) = call["function"]["arguments"].as_str() {
                calls[index].1.push_str(piece);
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = Some(reason.to_owned());
        }
    }
    let calls = calls
        .into_iter()
        .map(|(name, arguments)| (name, serde_json::from_str(&arguments).unwrap()))
        .collect();
    (text, calls, finish)
}

#[test]
fn chat_completions_stream_text_then_usage_then_done() {
    let llm = ScriptedLlm::start([
        Turn::text("hello, world").usage(Usage::new(10, 5).cached(3).reasoning(2))
    ]);
    let answer = post(llm.addr(), CHAT, &[], &pi_request());

    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert!(answer.complete);
    assert!(answer.body.trim_end().ends_with("data: [DONE]"));
    let events = answer.events();
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["model"], "fake-model");
    let (text, calls, finish) = chat_assembled(&events);
    assert_eq!(text, "hello, world");
    assert!(calls.is_empty());
    assert_eq!(finish.as_deref(), Some("stop"));
    let usage = &events.last().unwrap()["usage"];
    assert_eq!(events.last().unwrap()["choices"], json!([]));
    assert_eq!(
        *usage,
        json!({
            "prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18,
            "prompt_tokens_details": { "cached_tokens": 3 },
            "completion_tokens_details": { "reasoning_tokens": 2 },
        })
    );
}

#[test]
fn chat_completions_without_include_usage_sends_no_usage_chunk() {
    let llm = ScriptedLlm::start([Turn::text("hi")]);
    let mut request = pi_request();
    request.as_object_mut().unwrap().remove("stream_options");
    let events = post(llm.addr(), CHAT, &[], &request).events();
    assert!(
        events.iter().all(|e| e.get("usage").is_none()),
        "{events:?}"
    );
}

#[test]
fn chat_completions_answer_whole_json_when_not_streamed() {
    let llm = ScriptedLlm::start([Turn::shell("ls").with_text("looking").tokens(7, 3)]);
    let mut request = pi_request();
    request["stream"] = json!(false);
    let answer = post(llm.addr(), CHAT, &[], &request);

    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["object"], "chat.completion");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "looking");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "bash");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({ "command": "ls" }));
    assert_eq!(body["usage"]["prompt_tokens"], 7);
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

#[test]
fn shell_action_becomes_the_shell_tool_each_agent_offers() {
    let script = || {
        [Turn::shell("echo hi > f.txt")
            .with_text("I will write it.")
            .tokens(100, 20)]
    };

    let llm = ScriptedLlm::start(script());
    let (text, calls, finish) =
        chat_assembled(&post(llm.addr(), CHAT, &[], &pi_request()).events());
    assert_eq!(text, "I will write it.");
    assert_eq!(
        calls,
        vec![("bash".to_owned(), json!({ "command": "echo hi > f.txt" }))]
    );
    assert_eq!(finish.as_deref(), Some("tool_calls"));

    let llm = ScriptedLlm::start(script());
    let events = post(llm.addr(), RESPONSES, &[], &codex_request()).events();
    let call = events
        .iter()
        .find(|e| e["type"] == "response.output_item.done" && e["item"]["type"] == "function_call")
        .expect("a function call item");
    assert_eq!(call["item"]["name"], "exec_command");
    let arguments: Value =
        serde_json::from_str(call["item"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({ "cmd": "echo hi > f.txt" }));

    let llm = ScriptedLlm::start(script());
    let events = post(llm.addr(), MESSAGES, &[], &claude_request()).events();
    let start = events
        .iter()
        .find(|e| e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(start["content_block"]["name"], "Bash");
    let input: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .map(|e| e["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        json!({ "command": "echo hi > f.txt" })
    );
}

#[test]
fn write_file_uses_the_write_tool_or_else_the_shell() {
    let content = "it's \"quoted\"\n$HOME `x`\n";
    let turn = || Turn::write_file("sub/f.txt", content);

    let llm = ScriptedLlm::start([turn()]);
    let (_, calls, _) = chat_assembled(&post(llm.addr(), CHAT, &[], &pi_request()).events());
    assert_eq!(
        calls,
        vec![(
            "write".to_owned(),
            json!({ "path": "sub/f.txt", "content": content })
        )]
    );

    let llm = ScriptedLlm::start([turn()]);
    let events = post(llm.addr(), MESSAGES, &[], &claude_request()).events();
    let input: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .map(|e| e["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        json!({ "file_path": "sub/f.txt", "content": content })
    );

    // Codex offers no write tool: the server writes the file with a shell command, which must
    // reproduce the content byte for byte.
    let llm = ScriptedLlm::start([turn()]);
    let events = post(llm.addr(), RESPONSES, &[], &codex_request()).events();
    let item = &events
        .iter()
        .find(|e| e["type"] == "response.output_item.done")
        .unwrap()["item"];
    assert_eq!(item["name"], "exec_command");
    let arguments: Value = serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(arguments["cmd"].as_str().unwrap())
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sub/f.txt")).unwrap(),
        content
    );
}

#[test]
fn a_tool_the_request_does_not_offer_is_refused_with_a_400_that_says_why() {
    let llm = ScriptedLlm::start([Turn::shell("ls")]);
    let mut request = pi_request();
    request["tools"] = json!([]);
    let answer = post(llm.addr(), CHAT, &[], &request);

    assert_eq!(answer.status, 400);
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("no shell tool"), "{message}");
    assert!(matches!(llm.requests()[0].answer, Answer::Refused(_)));
}

#[test]
fn raw_tool_action_is_sent_as_given() {
    let llm = ScriptedLlm::start([Turn::actions([
        Action::Tool {
            name: "read".to_owned(),
            arguments: json!({ "path": "a" }),
        },
        Action::Shell("true".to_owned()),
    ])]);
    let (_, calls, _) = chat_assembled(&post(llm.addr(), CHAT, &[], &pi_request()).events());
    assert_eq!(
        calls,
        vec![
            ("read".to_owned(), json!({ "path": "a" })),
            ("bash".to_owned(), json!({ "command": "true" })),
        ]
    );
}

#[test]
fn responses_stream_has_items_deltas_and_completed_usage() {
    let llm = ScriptedLlm::start([Turn::shell("ls")
        .with_text("ok")
        .usage(Usage::new(50, 9).cached(40).reasoning(4))]);
    let answer = post(llm.addr(), RESPONSES, &[], &codex_request());

    assert!(answer.complete);
    assert_eq!(
        event_names(&answer.body),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let events = answer.events();
    // Each event's `type` repeats its SSE name; sequence numbers count up from 0.
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], i);
    }
    let arguments: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, r#"{"cmd":"ls"}"#);
    let completed = &events.last().unwrap()["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"].as_array().unwrap().len(), 2);
    assert_eq!(
        completed["usage"],
        json!({
            "input_tokens": 90,
            "input_tokens_details": { "cached_tokens": 40 },
            "output_tokens": 9,
            "output_tokens_details": { "reasoning_tokens": 4 },
            "total_tokens": 99,
        })
    );
}

#[test]
fn messages_stream_has_blocks_stop_reason_and_usage() {
    let llm = ScriptedLlm::start([Turn::shell("ls")
        .with_text("ok")
        .usage(Usage::new(12, 30).cached(1000).cache_write(200))]);
    let answer = post(
        llm.addr(),
        MESSAGES,
        &[
            ("x-api-key", "sk-ant-test"),
            ("anthropic-version", "2023-06-01"),
        ],
        &claude_request(),
    );

    assert!(answer.complete);
    assert_eq!(
        event_names(&answer.body),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let events = answer.events();
    assert_eq!(
        events[0]["message"]["usage"],
        json!({ "input_tokens": 12, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000, "output_tokens": 1 })
    );
    let text: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "text_delta")
        .map(|e| e["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "ok");
    let delta = &events[10];
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 30);

    let request = &llm.requests()[0];
    assert_eq!(request.protocol, Some(Protocol::Messages));
    assert_eq!(request.path, "/v1/messages");
    assert_eq!(request.query.as_deref(), Some("beta=true"));
    assert_eq!(request.api_key(), Some("sk-ant-test"));
    assert_eq!(request.header("Anthropic-Version"), Some("2023-06-01"));
    assert_eq!(request.tool_names(), ["Bash", "Write"]);
}

#[test]
fn text_reply_ends_the_turn_in_each_protocol() {
    let llm = ScriptedLlm::start([
        Turn::text("done."),
        Turn::text("done."),
        Turn::text("done.").truncated(),
    ]);
    let events = post(llm.addr(), MESSAGES, &[], &claude_request()).events();
    assert_eq!(events[events.len() - 2]["delta"]["stop_reason"], "end_turn");
    let events = post(llm.addr(), RESPONSES, &[], &codex_request()).events();
    assert_eq!(
        events.last().unwrap()["response"]["output"][0]["content"][0]["text"],
        "done."
    );
    let (_, _, finish) = chat_assembled(&post(llm.addr(), CHAT, &[], &pi_request()).events());
    assert_eq!(finish.as_deref(), Some("length"));
}

#[test]
fn a_request_without_stream_gets_a_whole_answer_or_a_broken_one() {
    // Claude Code retries a broken stream once without streaming: both shapes must work.
    let llm = ScriptedLlm::start([
        Turn::shell("ls").with_text("ok").tokens(5, 6),
        Turn::garbage(),
    ]);
    let mut request = claude_request();
    request["stream"] = json!(false);
    let answer = post(llm.addr(), MESSAGES, &[], &request);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["type"], "message");
    assert_eq!(body["stop_reason"], "tool_use");
    assert_eq!(body["content"][0], json!({ "type": "text", "text": "ok" }));
    assert_eq!(body["content"][1]["name"], "Bash");
    assert_eq!(body["content"][1]["input"], json!({ "command": "ls" }));
    assert_eq!(body["usage"]["input_tokens"], 5);
    assert_eq!(body["usage"]["output_tokens"], 6);

    let answer = post(llm.addr(), MESSAGES, &[], &request);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(
        serde_json::from_str::<Value>(&answer.body).is_err(),
        "{}",
        answer.body
    );
}

#[test]
fn rate_limit_answers_429_with_retry_after_in_the_protocols_error_shape() {
    let llm = ScriptedLlm::start([
        Turn::rate_limited(1),
        Turn::rate_limited(2).header("x-should-retry", "true"),
        Turn::overloaded(),
    ]);
    let answer = post(llm.addr(), CHAT, &[], &pi_request());
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.json()["error"]["type"], "rate_limit_error");

    let answer = post(llm.addr(), MESSAGES, &[], &claude_request());
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("2"));
    assert_eq!(answer.header("x-should-retry"), Some("true"));
    assert_eq!(
        answer.json(),
        json!({ "type": "error", "error": { "type": "rate_limit_error", "message": "scripted: rate limited" } })
    );

    let answer = post(llm.addr(), MESSAGES, &[], &claude_request());
    assert_eq!(answer.status, 529);
    assert_eq!(answer.json()["error"]["type"], "overloaded_error");
}

#[test]
fn server_error_answers_500() {
    let llm = ScriptedLlm::start([Turn::error(500).message("boom")]);
    let answer = post(llm.addr(), RESPONSES, &[], &codex_request());
    assert_eq!(answer.status, 500);
    assert_eq!(answer.json()["error"]["message"], "boom");
    assert_eq!(answer.json()["error"]["type"], "server_error");
}

#[test]
fn garbage_follows_a_valid_start_and_the_stream_then_ends() {
    let llm = ScriptedLlm::start([Turn::garbage(), Turn::garbage()]);
    let answer = post(llm.addr(), MESSAGES, &[], &claude_request());
    assert_eq!(answer.status, 200);
    assert!(answer.complete, "the body ends cleanly");
    assert_eq!(event_names(&answer.body), ["message_start", "ping"]);
    assert!(answer.body.contains("data: {\"this is not\": json"));
    assert!(!answer.body.contains("message_stop"));

    let answer = post(llm.addr(), CHAT, &[], &pi_request());
    assert!(answer.body.starts_with("data: {"));
    assert!(!answer.body.contains("[DONE]"));
}

#[test]
fn cut_stream_ends_without_the_last_chunk() {
    let llm = ScriptedLlm::start([Turn::cut()]);
    let answer = post(llm.addr(), RESPONSES, &[], &codex_request());
    assert_eq!(answer.status, 200);
    assert!(!answer.complete, "{answer:?}");
    assert!(!answer.timed_out);
    assert_eq!(
        event_names(&answer.body),
        ["response.created", "response.in_progress"]
    );
}

#[test]
fn stall_holds_the_connection_open_after_the_start() {
    let llm = ScriptedLlm::start([
        Turn::stall(),
        Turn::stall_at(StallAt::Headers),
        Turn::stall_at(StallAt::Request),
    ]);
    let wait = Duration::from_millis(300);

    let started = Instant::now();
    let answer = post_within(llm.addr(), MESSAGES, &[], &claude_request(), wait);
    assert!(started.elapsed() >= wait);
    assert!(answer.timed_out && !answer.complete, "{answer:?}");
    assert_eq!(answer.status, 200);
    assert_eq!(event_names(&answer.body), ["message_start", "ping"]);

    let answer = post_within(llm.addr(), CHAT, &[], &pi_request(), wait);
    assert!(answer.timed_out);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "");

    let answer = post_within(llm.addr(), RESPONSES, &[], &codex_request(), wait);
    assert!(answer.timed_out);
    assert_eq!(answer.status, 0, "not even a status line");

    // Dropping the server ends the held answers (the test would hang otherwise).
    drop(llm);
}

#[test]
fn an_exhausted_script_answers_done_and_counts_it() {
    let llm = ScriptedLlm::start([Turn::text("first")]);
    post(llm.addr(), CHAT, &[], &pi_request());
    assert_eq!(llm.remaining(), 0);
    let (text, _, finish) = chat_assembled(&post(llm.addr(), CHAT, &[], &pi_request()).events());
    assert_eq!(text, "done");
    assert_eq!(finish.as_deref(), Some("stop"));
    assert_eq!(llm.unscripted(), 1);
    let answers: Vec<Answer> = llm.requests().into_iter().map(|r| r.answer).collect();
    assert_eq!(answers, [Answer::Turn(0), Answer::Fallback]);

    let llm = ScriptedLlm::builder().fallback(Turn::error(500)).start();
    for _ in 0..3 {
        assert_eq!(
            post(llm.addr(), MESSAGES, &[], &claude_request()).status,
            500
        );
    }
    assert_eq!(llm.unscripted(), 3);
}

#[test]
fn a_conditional_turn_waits_for_the_request_that_matches() {
    let llm = ScriptedLlm::start([
        Turn::text("fixed").when_last_message_contains("1 failed"),
        Turn::shell("cargo test"),
    ]);
    let (_, calls, _) = chat_assembled(&post(llm.addr(), CHAT, &[], &pi_request()).events());
    assert_eq!(
        calls[0].0, "bash",
        "the first request does not match the first turn"
    );

    let mut request = pi_request();
    request["messages"].as_array_mut().unwrap().push(
        json!({ "role": "tool", "tool_call_id": "call_1", "content": "test result: 1 failed" }),
    );
    let (text, _, _) = chat_assembled(&post(llm.addr(), CHAT, &[], &request).events());
    assert_eq!(text, "fixed");
    let answers: Vec<Answer> = llm.requests().into_iter().map(|r| r.answer).collect();
    assert_eq!(answers, [Answer::Turn(1), Answer::Turn(0)]);
}

#[test]
fn every_request_is_recorded_with_headers_key_and_body() {
    let llm = ScriptedLlm::start([Turn::text("a")]);
    llm.push(Turn::text("b"));
    post(
        llm.addr(),
        CHAT,
        &[("authorization", "Bearer sk-test-one")],
        &pi_request(),
    );
    post(
        llm.addr(),
        "/v1/responses",
        &[("Authorization", "Bearer sk-test-two")],
        &codex_request(),
    );
    let unknown = post(llm.addr(), "/v1/embeddings", &[], &json!({}));
    assert_eq!(unknown.status, 404);
    let count = post(
        llm.addr(),
        "/v1/messages/count_tokens",
        &[],
        &claude_request(),
    );
    assert!(count.json()["input_tokens"].as_u64().unwrap() > 0);

    let requests = llm.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[0].api_key(), Some("sk-test-one"));
    assert_eq!(requests[0].protocol, Some(Protocol::ChatCompletions));
    assert_eq!(requests[0].model(), Some("fake-model"));
    assert!(requests[0].streamed());
    assert_eq!(requests[0].last_message_text(), "write hi to f.txt");
    assert_eq!(requests[0].tool_names(), ["read", "bash", "write"]);
    assert_eq!(requests[1].api_key(), Some("sk-test-two"));
    assert_eq!(requests[1].answer, Answer::Turn(1));
    assert_eq!(
        requests[1].body.as_ref().unwrap()["input"][1]["role"],
        "user"
    );
    assert_eq!(requests[2].answer, Answer::NotFound);
    assert_eq!(requests[3].answer, Answer::Helper);
    assert_eq!(llm.model_requests().len(), 2);
    assert!(llm.wait_for_requests(4, Duration::ZERO));
    assert_eq!(llm.unscripted(), 0);
}

/// Serves a script given in the environment until `LLM_SECS` pass (default 600), logging each
/// request as it arrives, for trying the real agent CLIs by hand (see
/// `tests/fixtures/agents/README.md`):
///
/// `LLM_SCRIPT='shell:echo hi > f.txt;;text:wrote f.txt' LLM_URL_FILE=/tmp/url cargo test --test it
/// serve_script_from_env -- --ignored --nocapture`
///
/// Turns, separated by `;;`: `shell:CMD`, `write:PATH:CONTENT`, `text:TEXT`, `error:STATUS`,
/// `rate:SECONDS`, `overloaded`, `garbage`, `cut`, `stall`, `stall-headers`, `stall-request`;
/// `text:T++shell:CMD` is one reply with both; `LLM_FALLBACK` is one turn. A turn ending in
/// ` @@input,output[,cached]` reports that usage; `LLM_TOKENS=input,output[,cached]` sets it for
/// every other reply.
#[test]
#[ignore = "a manual harness for the real agent CLIs"]
fn serve_script_from_env() {
    let parse_usage = |spec: &str| {
        let numbers: Vec<u64> = spec.split(',').map(|n| n.parse().unwrap()).collect();
        Usage::new(numbers[0], numbers[1]).cached(numbers.get(2).copied().unwrap_or(0))
    };
    let usage = std::env::var("LLM_TOKENS").ok().as_deref().map(parse_usage);
    let parse = |spec: &str| {
        let (spec, tokens) = match spec.split_once(" @@") {
            Some((spec, tokens)) => (spec, Some(tokens)),
            None => (spec, None),
        };
        let usage = tokens.map(parse_usage).or(usage);
        // `text:T++shell:C`: one reply with text and a tool call.
        let (said, spec) = match spec.split_once("++") {
            Some((said, spec)) => (said.strip_prefix("text:"), spec),
            None => (None, spec),
        };
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let turn = match kind {
            "shell" => Turn::shell(rest),
            "write" => {
                let (path, content) = rest.split_once(':').expect("write:PATH:CONTENT");
                Turn::write_file(path, content)
            }
            "text" => Turn::text(rest),
            "error" => Turn::error(rest.parse().unwrap()),
            "rate" => Turn::rate_limited(rest.parse().unwrap()),
            "overloaded" => Turn::overloaded(),
            "garbage" => Turn::garbage(),
            "cut" => Turn::cut(),
            "stall" => Turn::stall(),
            "stall-headers" => Turn::stall_at(StallAt::Headers),
            "stall-request" => Turn::stall_at(StallAt::Request),
            other => panic!("unknown turn `{other}`"),
        };
        let turn = match said {
            Some(said) => turn.with_text(said),
            None => turn,
        };
        match usage {
            Some(usage) => turn.usage(usage),
            None => turn,
        }
    };
    let script = std::env::var("LLM_SCRIPT").unwrap_or_default();
    let mut builder =
        ScriptedLlm::builder().turns(script.split(";;").filter(|s| !s.is_empty()).map(parse));
    if let Ok(fallback) = std::env::var("LLM_FALLBACK") {
        builder = builder.fallback(parse(&fallback));
    }
    let llm = builder.start();
    println!("scripted LLM at http://{}", llm.addr());
    if let Ok(file) = std::env::var("LLM_URL_FILE") {
        std::fs::write(file, format!("http://{}", llm.addr())).unwrap();
    }
    let secs: u64 = std::env::var("LLM_SECS").map_or(600, |s| s.parse().unwrap());
    let started = Instant::now();
    let mut seen = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        for request in llm.requests().iter().skip(seen) {
            println!(
                "{:>8.3}s {} {}{} {:?} stream={} retry-count={} key={} tools={:?} last={:.80?}",
                request.at.duration_since(started).as_secs_f64(),
                request.method,
                request.path,
                request
                    .query
                    .as_ref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default(),
                request.answer,
                request.streamed(),
                request.header("x-stainless-retry-count").unwrap_or("-"),
                request.api_key().unwrap_or("-"),
                request.tool_names(),
                request.last_message_text(),
            );
            seen += 1;
        }
        if std::env::var("LLM_STOP_FILE").is_ok_and(|f| std::path::Path::new(&f).exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
