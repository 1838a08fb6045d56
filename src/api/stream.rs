//! `GET /maxions/{id}/stream`: a run's events as Server-Sent Events, from the start (or after
//! `Last-Event-ID`) to its end. Each client reads the log for what was written before it came
//! (or while it fell behind) and the hub's broadcast for what comes next; the `seq` of every
//! line decides what it has sent, so nothing is lost or sent twice across the switch, a lag or
//! a reconnect.

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, mpsc};

use super::error::rejection;
use super::runs::{LogsQuery, SeqOnly};
use super::{ApiError, ApiState};

/// How often a comment keeps an idle stream (and the proxies in front of it) open.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often a client looks at the log without being woken: a run the daemon does not own (a
/// `maxions run` in the folder) and records the daemon writes itself reach it this way.
const POLL: Duration = Duration::from_secs(1);
/// The most a client reads from a log at once.
const CHUNK: u64 = 1 << 20;

/// Follows a run's events live.
#[utoipa::path(get, path = "/maxions/{id}/stream", tag = "runs",
    params(("id" = String, Path, description = "The run's id"), LogsQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this `seq` (what a reconnecting EventSource sends)")),
    responses((status = 200, description = "Server-Sent Events: `id: <seq>` and `data: <event JSON line>` per event, a comment every 15 s, and `event: end` with `{\"status\"}` once the run has ended", content_type = "text/event-stream", body = String),
              (status = 400, body = super::error::ErrorBody), (status = 401, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
pub async fn stream(
    State(state): State<ApiState>,
    id: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let UrlPath(id) = id.map_err(rejection)?;
    let Query(query) = query.map_err(rejection)?;
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "`Last-Event-ID` must be the `seq` of the last event received (a number)",
                    )
                })?,
        ),
        None => None,
    };
    let after = resume.max(query.after).unwrap_or(0);
    let view = state.0.daemon.now();
    let located = state
        .locate(&view, &id)
        .ok_or_else(|| ApiError::no_run(&id))?;
    // Subscribed before the log is first read: a line written in between is in one or the other.
    let lines = state.0.hub.subscribe();
    let (tx, rx) = mpsc::channel::<Sse>(64);
    let follower = Follower {
        state: state.clone(),
        id,
        log: located.log,
        offset: 0,
        last: after,
        pending: Vec::new(),
    };
    tokio::spawn(follower.run(lines, tx));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    let mut response = axum::response::sse::Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    let headers = response.headers_mut();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    Ok(response)
}

/// One client's place in one run's events.
struct Follower {
    state: ApiState,
    id: String,
    log: PathBuf,
    /// How far into the log it has read (whole lines only).
    offset: u64,
    /// The `seq` of the last event sent.
    last: u64,
    /// Bytes of a line still being written.
    pending: Vec<u8>,
}

enum Step {
    Going,
    /// The run's end was sent, or the client went.
    Done,
}

struct ClientCount<'a>(&'a super::Hub);

impl Drop for ClientCount<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Follower {
    async fn run(
        mut self,
        mut lines: broadcast::Receiver<std::sync::Arc<super::hub::Published>>,
        tx: mpsc::Sender<Sse>,
    ) {
        let hub = std::sync::Arc::clone(&self.state.0.hub);
        hub.clients.fetch_add(1, Ordering::Relaxed);
        let _count = ClientCount(&hub);
        let closing = self.state.0.closing.clone();
        let mut view = self.state.0.daemon.view.clone();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The connection is up: say so at once, and how soon to reconnect.
        if tx
            .send(
                Sse::default()
                    .comment("connected")
                    .retry(Duration::from_secs(2)),
            )
            .await
            .is_err()
        {
            return;
        }
        loop {
            if let Step::Done = self.catch_up(&tx).await {
                return;
            }
            // Live: lines from the broadcast while they follow on; anything else (a gap, a
            // lag, a change of the daemon's state, the poll) sends it back to the log.
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    () = closing.cancelled() => return,
                    received = lines.recv() => match received {
                        Ok(line) if line.run == self.id => {
                            if line.seq <= self.last {
                                continue;
                            }
                            if line.seq != self.last + 1 {
                                break;
                            }
                            self.last = line.seq;
                            let event = Sse::default().id(line.seq.to_string()).data(&line.json);
                            if tx.send(event).await.is_err() {
                                return;
                            }
                            if let Some(status) = &line.finished {
                                let _ = tx.send(end(status)).await;
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    changed = view.changed() => {
                        if changed.is_err() {
                            // The daemon is gone: what is in the log is all there will be.
                            let _ = self.catch_up(&tx).await;
                            return;
                        }
                        break;
                    }
                    _ = poll.tick() => break,
                }
            }
        }
    }

    /// Sends what the log has after the last event sent.
    async fn catch_up(&mut self, tx: &mpsc::Sender<Sse>) -> Step {
        loop {
            let log = self.log.clone();
            let offset = self.offset;
            let read = tokio::task::spawn_blocking(move || read_from(&log, offset)).await;
            let Ok(Some(bytes)) = read else {
                return Step::Going;
            };
            let more = bytes.len() as u64 == CHUNK;
            if let Step::Done = self.send_lines(&bytes, tx).await {
                return Step::Done;
            }
            if !more {
                return Step::Going;
            }
        }
    }

    /// Sends the whole lines of `bytes` (what follows the last read) not sent yet.
    async fn send_lines(&mut self, bytes: &[u8], tx: &mpsc::Sender<Sse>) -> Step {
        self.offset += bytes.len() as u64;
        self.pending.extend_from_slice(bytes);
        let Some(end_of_lines) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Step::Going;
        };
        let whole: Vec<u8> = self.pending.drain(..=end_of_lines).collect();
        for line in whole.split(|b| *b == b'\n') {
            let Ok(seen) = serde_json::from_slice::<SeqOnly>(line) else {
                continue;
            };
            if seen.seq <= self.last {
                continue;
            }
            self.last = seen.seq;
            let json = String::from_utf8_lossy(line);
            if tx
                .send(Sse::default().id(seen.seq.to_string()).data(json.as_ref()))
                .await
                .is_err()
            {
                return Step::Done;
            }
            if seen.kind == "run_finished" {
                let _ = tx.send(end(seen.status.as_deref().unwrap_or(""))).await;
                return Step::Done;
            }
        }
        Step::Going
    }
}

/// The last event of a stream.
fn end(status: &str) -> Sse {
    Sse::default()
        .event("end")
        .data(serde_json::json!({ "status": status }).to_string())
}

/// What the log holds from `offset` on (at most [`CHUNK`]); `None` when there is no log yet.
fn read_from(log: &std::path::Path, offset: u64) -> Option<Vec<u8>> {
    let mut file = std::fs::File::open(log).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut bytes = Vec::new();
    file.take(CHUNK).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}
