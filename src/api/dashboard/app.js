// maxions dashboard: a single-page view of the daemon's HTTP API (runs, their live logs,
// schedules, submitting a task). Vanilla JS, no build step, nothing loaded from elsewhere.
// Everything the API returns is untrusted text (task names, log output, PR titles): the DOM is
// built with textContent only, never innerHTML, and links are limited to http(s) URLs.
"use strict";

(() => {
  const TOKEN_KEY = "maxions.token";
  const POLL_MS = 2000;
  const MAX_LOG_LINES = 20000;
  const STATUSES = [
    "queued", "running", "succeeded", "failed", "no_changes", "cancelled",
    "timed_out", "interrupted", "invalid", "budget_exceeded",
  ];
  const ACTIVE = new Set(["queued", "running"]);
  /** Log events after which the run's summary and steps have changed. */
  const CHANGES_STATE = new Set([
    "run_started", "sandbox_ready", "step_started", "step_skipped", "step_finished",
    "fix_round", "check_failed", "commit", "pushed", "pr", "pr_not_opened", "usage",
    "agent_finished", "budget_exceeded", "run_finished",
  ]);
  const EXAMPLE_TASK = [
    "# A task for maxions: what to do, on which repository, and how.",
    "# Lines starting with # are comments; the commented keys are optional.",
    "task: |",
    "  Add a dark mode toggle to the settings page.",
    "  Keep the current light theme the default.",
    "repo: owner/name              # or a clone URL: https://…, file://…",
    "blueprint: default            # a name in blueprints/, or a path",
    "# base: main                  # branch to start from (default: the repository's default)",
    "# branch: maxions/dark-mode   # branch to push (default: derived from the task's name)",
    "# vars:                       # free-form values for the blueprint's templates",
    "#   package_manager: bun",
    "# schedule: \"0 9 * * 1\"       # 5-field cron: a recurring task instead of one run",
    "# timezone: Europe/Berlin     # for the schedule (default: UTC)",
    "",
  ].join("\n");

  // ---------------------------------------------------------------------------------------
  // DOM helpers. `h` never parses HTML: strings become text nodes.

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === null || value === undefined || value === false) continue;
        if (key === "class") el.className = value;
        else if (key === "text") el.textContent = value;
        else if (key === "dataset") Object.assign(el.dataset, value);
        // Through the CSSOM: the page's Content-Security-Policy refuses style attributes.
        else if (key === "style") Object.assign(el.style, value);
        else if (key.startsWith("on") && typeof value === "function") {
          el.addEventListener(key.slice(2), value);
        } else if (key === "value") el.value = value;
        else el.setAttribute(key, value === true ? "" : String(value));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) append(el, child);
      else if (child instanceof Node) el.appendChild(child);
      else el.appendChild(document.createTextNode(String(child)));
    }
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  /** The URL when it is an absolute http(s) one, else null (no `javascript:` links). */
  function safeUrl(url) {
    if (typeof url !== "string") return null;
    try {
      const parsed = new URL(url);
      return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  function icon(name) {
    const paths = {
      cancel: "M6 6l12 12M18 6L6 18",
      rerun: "M4 12a8 8 0 1 0 2.3-5.7M4 4v4h4",
      pr: "M7 4a2 2 0 1 0 0 4a2 2 0 1 0 0-4M7 8v8M7 16a2 2 0 1 0 0 4a2 2 0 1 0 0-4M17 20a2 2 0 1 0 0-4a2 2 0 1 0 0 4M17 16V9a3 3 0 0 0-3-3h-3M13 4l-2 2 2 2",
      down: "M12 5v14M6 13l6 6 6-6",
      back: "M15 6l-6 6 6 6",
    };
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("class", "icon");
    svg.setAttribute("aria-hidden", "true");
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", paths[name] || "");
    svg.appendChild(path);
    return svg;
  }

  // ---------------------------------------------------------------------------------------
  // Formatting.

  /** `timed_out` → `Timed out`. */
  function label(status) {
    const words = String(status || "unknown").replace(/_/g, " ");
    return words.charAt(0).toUpperCase() + words.slice(1);
  }

  /** `timed_out` → `timed out`, for use inside a sentence. */
  function words(status) {
    return String(status || "unknown").replace(/_/g, " ");
  }

  function badge(status, extra) {
    return h("span", {
      class: "badge" + (extra ? " " + extra : ""),
      dataset: { status: status || "unknown" },
    }, h("span", { class: "badge-dot" }), label(status));
  }

  function parseTime(iso) {
    if (!iso) return null;
    const t = Date.parse(iso);
    return Number.isNaN(t) ? null : t;
  }

  function fmtClock(iso, withSeconds = true) {
    const t = parseTime(iso);
    if (t === null) return "—";
    const d = new Date(t);
    const now = new Date();
    const sameDay = d.toDateString() === now.toDateString();
    const time = d.toLocaleTimeString(undefined, withSeconds ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" });
    if (sameDay) return time;
    const opts = { month: "short", day: "numeric" };
    if (d.getFullYear() !== now.getFullYear()) opts.year = "numeric";
    return d.toLocaleDateString(undefined, opts) + " " + time;
  }

  function fmtFull(iso) {
    const t = parseTime(iso);
    return t === null ? "" : new Date(t).toLocaleString(undefined, { dateStyle: "full", timeStyle: "long" });
  }

  function fmtRelative(iso) {
    const t = parseTime(iso);
    if (t === null) return "";
    const s = Math.round((t - Date.now()) / 1000);
    const abs = Math.abs(s);
    const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
    const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
    if (abs < 5) return "just now";
    for (const [unit, size] of units) {
      if (abs >= size) return rtf.format(Math.round(s / size), unit);
    }
    return "";
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
    if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
  }

  /** A run's or step's duration: the recorded one, or time since it started while it runs. */
  function liveDuration(item) {
    if (item.duration_ms !== null && item.duration_ms !== undefined) return item.duration_ms;
    const started = parseTime(item.started_at);
    if (started !== null && (item.status === "running" || !item.status)) return Date.now() - started;
    return null;
  }

  function fmtTokens(n) {
    if (!n) return "0";
    if (n < 1000) return String(n);
    if (n < 1e6) return `${(n / 1e3).toFixed(n < 1e4 ? 1 : 0)}k`;
    return `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)}M`;
  }

  function fmtCost(usd) {
    if (usd === null || usd === undefined) return null;
    if (usd === 0) return "$0";
    return usd < 1 ? `$${usd.toFixed(4)}` : `$${usd.toFixed(2)}`;
  }

  /** Usage as the API (`input`…) or a log event (`input_tokens`…) spells it. */
  function usageOf(u) {
    if (!u || typeof u !== "object") return null;
    const pick = (a, b) => Number(u[a] ?? u[b] ?? 0) || 0;
    return {
      input: pick("input", "input_tokens"),
      output: pick("output", "output_tokens"),
      cacheRead: pick("cache_read", "cache_read_tokens"),
      cacheWrite: pick("cache_write", "cache_write_tokens"),
      cost: typeof u.cost_usd === "number" ? u.cost_usd : null,
    };
  }

  function fmtUsage(u) {
    const usage = usageOf(u);
    if (!usage) return null;
    const total = usage.input + usage.output + usage.cacheRead + usage.cacheWrite;
    if (total === 0 && usage.cost === null) return null;
    const parts = [`${fmtTokens(usage.input)} in`, `${fmtTokens(usage.output)} out`];
    if (usage.cacheRead) parts.push(`${fmtTokens(usage.cacheRead)} cached`);
    const cost = fmtCost(usage.cost);
    return { tokens: parts.join(" · "), cost, title: `input ${usage.input}, output ${usage.output}, cache read ${usage.cacheRead}, cache write ${usage.cacheWrite} tokens` };
  }

  function shortSha(sha) {
    return typeof sha === "string" ? sha.slice(0, 10) : "";
  }

  // ---------------------------------------------------------------------------------------
  // The API: bearer token, JSON errors, and the token prompt on 401.

  /** `mode`: what /api/config said; `blocked` while the token prompt is open; `accepted` once a
   * token got through, so that a later 401 can say the token changed. */
  const auth = { mode: "unknown", blocked: false, accepted: false };

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
      this.code = this.body.error || "";
    }
  }

  /** Thrown while the token prompt is open: callers stay quiet and try again later. */
  class Blocked extends Error {}

  function token() {
    try {
      return localStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  function setToken(value) {
    try {
      if (value) localStorage.setItem(TOKEN_KEY, value);
      else localStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage disabled: the token lives only as long as the page */
      memoryToken = value;
    }
  }
  let memoryToken = "";

  function authHeaders() {
    const t = token() || memoryToken;
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  async function api(path, options = {}) {
    if (auth.blocked) throw new Blocked();
    const headers = { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) };
    let body = options.body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    let res;
    try {
      res = await fetch(path, { method: options.method || "GET", headers, body, signal: options.signal, cache: "no-store" });
    } catch (error) {
      if (error && error.name === "AbortError") throw error;
      connection("down");
      throw new ApiError(0, { error: "network", message: "The daemon does not answer. Is `maxions daemon` running?" });
    }
    let data = null;
    const type = res.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      try {
        data = await res.json();
      } catch {
        data = null;
      }
    }
    if (res.status === 401) {
      unauthorized();
      throw new Blocked();
    }
    connection("ok");
    if (!res.ok) throw new ApiError(res.status, data);
    return { status: res.status, data, headers: res.headers };
  }

  function unauthorized() {
    setToken("");
    memoryToken = "";
    promptToken(auth.accepted ? "The daemon refused that token. Enter the current one." : "");
  }

  function promptToken(message) {
    auth.blocked = true;
    connection("auth");
    const overlay = document.getElementById("token-overlay");
    const error = document.getElementById("token-error");
    error.hidden = !message;
    error.textContent = message || "";
    if (overlay.hidden) {
      overlay.hidden = false;
      const input = document.getElementById("token-input");
      input.value = "";
      input.focus();
    }
  }

  async function submitToken(event) {
    event.preventDefault();
    const input = document.getElementById("token-input");
    const value = input.value.trim();
    if (!value) return;
    const button = document.getElementById("token-submit");
    button.disabled = true;
    try {
      // Check it against a route that needs it before closing the prompt.
      const res = await fetch("/maxions?limit=1", { headers: { Accept: "application/json", Authorization: `Bearer ${value}` }, cache: "no-store" });
      if (res.status === 401) {
        const error = document.getElementById("token-error");
        error.hidden = false;
        error.textContent = "The daemon refused that token.";
        input.select();
        return;
      }
      setToken(value);
      memoryToken = value;
      auth.accepted = true;
      auth.blocked = false;
      document.getElementById("token-overlay").hidden = true;
      document.getElementById("sign-out").hidden = false;
      route();
    } catch {
      const error = document.getElementById("token-error");
      error.hidden = false;
      error.textContent = "The daemon does not answer. Is `maxions daemon` running?";
    } finally {
      button.disabled = false;
    }
  }

  function connection(state) {
    const el = document.getElementById("conn");
    if (!el || el.dataset.state === state) return;
    el.dataset.state = state;
    const text = { ok: "connected", down: "daemon unreachable", auth: "sign in", idle: "connecting" }[state] || state;
    el.querySelector(".conn-text").textContent = text;
  }

  let toastTimer = 0;
  function toast(message, kind) {
    const el = document.getElementById("toast");
    el.textContent = message;
    el.dataset.kind = kind || "info";
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  function errorText(error) {
    if (error instanceof ApiError) return error.message;
    return String((error && error.message) || error);
  }

  // ---------------------------------------------------------------------------------------
  // Reading a run's event stream: fetch() (EventSource cannot send a bearer token), a small
  // SSE parser, reconnection with Last-Event-ID, and no event handed on twice.

  /**
   * Follows `/maxions/{id}/stream` until `event: end` or until `signal` aborts.
   * `after` is the last seq already shown; `on.event(line)` gets each new JSON line once,
   * `on.state(s)` hears "connecting" | "live" | "reconnecting" | "gone", `on.end(data)` the end.
   */
  async function followStream(id, after, signal, on) {
    let last = after || 0;
    let delay = 500;
    const path = `/maxions/${encodeURIComponent(id)}/stream`;
    while (!signal.aborted) {
      if (auth.blocked) {
        await sleep(500, signal);
        continue;
      }
      on.state(last > 0 || delay > 500 ? "reconnecting" : "connecting");
      try {
        const headers = { Accept: "text/event-stream", ...authHeaders() };
        if (last > 0) headers["Last-Event-ID"] = String(last);
        const res = await fetch(path, { headers, signal, cache: "no-store" });
        if (res.status === 401) {
          unauthorized();
          continue;
        }
        if (res.status === 404) {
          on.state("gone");
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        connection("ok");
        on.state("live");
        delay = 500;
        let ended = false;
        await readSse(res.body, signal, (message) => {
          if (message.event === "end") {
            ended = true;
            let data = {};
            try { data = JSON.parse(message.data || "{}"); } catch { /* keep {} */ }
            on.end(data);
            return false;
          }
          if (!message.data) return true;
          let line;
          try { line = JSON.parse(message.data); } catch { return true; }
          const seq = Number(message.id !== undefined ? message.id : line.seq);
          if (Number.isFinite(seq)) {
            if (seq <= last) return true;
            last = seq;
          }
          on.event(line);
          return true;
        });
        if (ended) return;
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof TypeError) connection("down");
      }
      on.state("reconnecting");
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 5000);
    }
  }

  /** Parses `text/event-stream` from `body`, calling `dispatch(message)` until it says false. */
  async function readSse(body, signal, dispatch) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    const onAbort = () => reader.cancel().catch(() => {});
    signal.addEventListener("abort", onAbort, { once: true });
    let buffer = "";
    let message = { data: "", event: undefined, id: undefined, hasData: false };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (message.hasData || message.event) {
              const keepGoing = dispatch({ data: message.data, event: message.event, id: message.id });
              if (keepGoing === false) {
                reader.cancel().catch(() => {});
                return;
              }
            }
            message = { data: "", event: undefined, id: undefined, hasData: false };
            continue;
          }
          if (line.startsWith(":")) continue; // heartbeat comment
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "data") {
            message.data = message.hasData ? `${message.data}\n${value}` : value;
            message.hasData = true;
          } else if (field === "event") message.event = value;
          else if (field === "id") message.id = value;
        }
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }

  // ---------------------------------------------------------------------------------------
  // ANSI SGR to spans. Only colours 30-37/90-97, 39, bold (1/22), dim, italic, underline and
  // reset are kept; every other escape sequence and control character is dropped.

  // CSI (ESC [ params intermediates final), OSC (ESC ] … BEL or ST), or a two-byte escape.
  const ESCAPES = /\x1b(?:\[([0-?]*)([ -/]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])?/g;
  const CONTROLS = /[\x00-\x08\x0b-\x1f\x7f]/g;

  function ansiInitial() {
    return { fg: null, bold: false, dim: false, italic: false, underline: false };
  }

  function applySgr(state, params) {
    const codes = params === "" ? [0] : params.split(";").map((p) => (p === "" ? 0 : Number(p)));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) Object.assign(state, ansiInitial());
      else if (c === 1) state.bold = true;
      else if (c === 2) state.dim = true;
      else if (c === 3) state.italic = true;
      else if (c === 4) state.underline = true;
      else if (c === 22) { state.bold = false; state.dim = false; }
      else if (c === 23) state.italic = false;
      else if (c === 24) state.underline = false;
      else if (c >= 30 && c <= 37) state.fg = c - 30;
      else if (c >= 90 && c <= 97) state.fg = c - 90 + 8;
      else if (c === 39) state.fg = null;
      else if (c === 38 || c === 48) {
        // Extended colours are not kept; skip their arguments.
        if (codes[i + 1] === 5) i += 2;
        else if (codes[i + 1] === 2) i += 4;
      }
    }
  }

  function styleClass(state) {
    const classes = [];
    if (state.fg !== null) classes.push(`a-fg${state.fg}`);
    if (state.bold) classes.push("a-b");
    if (state.dim) classes.push("a-dim");
    if (state.italic) classes.push("a-i");
    if (state.underline) classes.push("a-u");
    return classes.join(" ");
  }

  /** Appends `text` (one line, escapes included) to `el` as styled spans; returns the state after. */
  function renderAnsi(el, text, startState) {
    const state = { ...startState };
    let index = 0;
    const emit = (chunk) => {
      const clean = chunk.replace(CONTROLS, "");
      if (!clean) return;
      const cls = styleClass(state);
      if (cls) el.appendChild(h("span", { class: cls }, clean));
      else el.appendChild(document.createTextNode(clean));
    };
    ESCAPES.lastIndex = 0;
    let match;
    while ((match = ESCAPES.exec(text)) !== null) {
      emit(text.slice(index, match.index));
      index = ESCAPES.lastIndex;
      if (match[3] === "m" && match[2] === "" && /^[0-9;]*$/.test(match[1] || "")) {
        applySgr(state, match[1] || "");
      }
      if (match[0] === "") ESCAPES.lastIndex++; // never loop on an empty match
    }
    emit(text.slice(index));
    return state;
  }

  /** What a carriage return leaves visible: the text after the last one (progress bars). */
  function afterCarriageReturn(text) {
    const cr = text.lastIndexOf("\r");
    return cr < 0 ? text : text.slice(cr + 1);
  }

  // ---------------------------------------------------------------------------------------
  // The log view: output as terminal lines (chunks may end mid-line), other events as short
  // readable lines.

  class LogView {
    constructor(container) {
      this.el = container;
      this.count = 0;
      this.open = new Map(); // "step/stream" -> { el, raw, start } of a line not ended yet
      this.ansi = new Map(); // "step/stream" -> SGR state carried to the next line
      this.stick = true;
      this.scheduled = false;
      this.onStickChange = () => {};
      this.el.addEventListener("scroll", () => {
        const atBottom = this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 32;
        if (atBottom !== this.stick) {
          this.stick = atBottom;
          this.onStickChange(atBottom);
        }
      });
    }

    add(line) {
      if (line.type === "output") this.output(line);
      else {
        const described = describe(line);
        if (!described) return;
        // A step's unfinished line ends with the step; other events leave it open, so that
        // the rest of the line still joins it.
        if (line.type === "step_started" || line.type === "step_finished") {
          for (const key of this.open.keys()) {
            if (key.startsWith(`${line.step}/`)) this.open.delete(key);
          }
        }
        const el = this.row(line, "ev", described.tone);
        if (line.type === "step_started") el.dataset.stepStart = line.step;
        if (described.icon) el.appendChild(h("span", { class: "ev-icon" }, described.icon));
        const text = h("span", { class: "ln-text" });
        for (const part of described.parts) {
          text.appendChild(typeof part === "string" ? document.createTextNode(part) : part);
        }
        el.appendChild(text);
        this.push(el);
      }
    }

    output(line) {
      const key = `${line.step}/${line.stream}`;
      const text = String(line.text || "").replace(/\r\n/g, "\n");
      const pieces = text.split("\n");
      const endsLine = text.endsWith("\n");
      if (endsLine) pieces.pop();
      pieces.forEach((piece, i) => {
        let current = i === 0 ? this.open.get(key) : null;
        if (current) {
          current.raw += piece;
        } else {
          const el = this.row(line, "out", line.stream === "stderr" ? "stderr" : "");
          el.dataset.step = line.step || "";
          const body = h("span", { class: "ln-text" });
          el.appendChild(body);
          current = { el, body, raw: piece, start: this.ansi.get(key) || ansiInitial() };
          this.push(el);
        }
        clear(current.body);
        const state = renderAnsi(current.body, afterCarriageReturn(current.raw), current.start);
        if (!current.body.firstChild) current.body.appendChild(document.createTextNode("\u200b"));
        this.ansi.set(key, state);
        const last = i === pieces.length - 1;
        if (last && !endsLine) this.open.set(key, current);
        else this.open.delete(key);
      });
      if (endsLine && pieces.length === 0) this.open.delete(key);
    }

    row(line, kind, tone) {
      const el = h("div", { class: `line ${kind}${tone ? " " + tone : ""}`, dataset: { seq: line.seq, type: line.type } });
      const ts = parseTime(line.ts);
      el.appendChild(h("span", { class: "ln-time", title: line.ts || "" },
        ts === null ? "" : new Date(ts).toLocaleTimeString(undefined, { hour12: false })));
      return el;
    }

    push(el) {
      this.el.appendChild(el);
      this.count++;
      if (this.count > MAX_LOG_LINES) {
        const first = this.el.querySelector(".line");
        if (first) first.remove();
        this.count--;
        if (!this.el.querySelector(".trimmed")) {
          this.el.prepend(h("div", { class: "trimmed" }, "Older lines are hidden here; `maxions logs` shows the whole log."));
        }
      }
      this.follow();
    }

    follow() {
      if (!this.stick || this.scheduled) return;
      this.scheduled = true;
      const go = () => {
        this.scheduled = false;
        if (this.stick) this.el.scrollTop = this.el.scrollHeight;
      };
      if (document.hidden) setTimeout(go, 50);
      else requestAnimationFrame(go);
    }

    toBottom() {
      this.stick = true;
      this.onStickChange(true);
      this.el.scrollTop = this.el.scrollHeight;
    }

    note(text, tone) {
      this.el.appendChild(h("div", { class: `line note ${tone || ""}` }, h("span", { class: "ln-time" }), h("span", { class: "ln-text" }, text)));
      this.follow();
    }
  }

  /** A log event as one short line: `{icon, tone, parts}`; null for events not worth a line. */
  function describe(line) {
    const step = line.step ? h("b", { class: "ev-step" }, line.step) : "";
    const s = (v) => (v === null || v === undefined ? "" : String(v));
    switch (line.type) {
      case "run_started":
        return { icon: "●", tone: "info", parts: ["Run started: ", h("b", { title: s(line.task) }, s(line.task).split("/").pop()), ` on ${s(line.repo)} (blueprint ${s(line.blueprint)}, branch ${s(line.branch)} from ${s(line.base)})`, line.trigger ? ` · ${line.trigger}` : ""] };
      case "sandbox_ready":
        return { icon: "▣", tone: "muted", parts: [`Sandbox ready (${s(line.image)})`] };
      case "step_started":
        return { icon: "▶", tone: "stephead", parts: ["Step ", step, " started", line.kind ? ` · ${line.kind}` : ""] };
      case "step_skipped":
        return { icon: "↷", tone: "muted", parts: ["Step ", step, ` skipped: ${s(line.reason)}`] };
      case "step_finished": {
        const ok = line.status === "succeeded" || line.status === "no_changes";
        const bits = [fmtDuration(line.duration_ms)];
        if (line.exit_code !== null && line.exit_code !== undefined) bits.push(`exit ${line.exit_code}`);
        return { icon: ok ? "✓" : line.status === "skipped" ? "↷" : "✗", tone: ok ? "good" : "bad", parts: ["Step ", step, ` ${words(line.status)} (${bits.join(", ")})`, line.reason ? `: ${line.reason}` : ""] };
      }
      case "output_truncated":
        return { icon: "…", tone: "warn", parts: ["Output of ", step, ` cut after ${fmtTokens(line.logged_bytes)} bytes`] };
      case "check_failed":
        return { icon: "✗", tone: "bad", parts: ["Check ", h("b", null, s(line.check)), " of ", step, " failed", line.exit_code !== null && line.exit_code !== undefined ? ` (exit ${line.exit_code})` : "", line.round ? ` after fix round ${line.round}` : ""] };
      case "fix_round":
        return { icon: "↻", tone: line.passed ? "good" : "warn", parts: [`Fix round ${s(line.round)}/${s(line.max_rounds)} of `, step, Array.isArray(line.fixing) && line.fixing.length ? ` (${line.fixing.join(", ")})` : "", line.passed ? ": checks pass" : ": still failing"] };
      case "commit":
        return { icon: "◆", tone: "info", parts: ["Committed ", h("code", null, shortSha(line.sha))] };
      case "pushed":
        return { icon: "↑", tone: "info", parts: [`Pushed ${s(line.branch)}`] };
      case "pr": {
        const url = safeUrl(line.url);
        const link = url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, `#${s(line.number)}`) : `#${s(line.number)}`;
        return { icon: "⇡", tone: "good", parts: [line.created ? "Opened pull request " : "Updated pull request ", link, line.draft ? " (draft)" : ""] };
      }
      case "pr_not_opened":
        return { icon: "⇡", tone: "muted", parts: ["Would open pull request ", h("b", null, `“${s(line.title)}”`), line.draft ? " (draft)" : "", line.reason ? ` · ${line.reason}` : ""] };
      case "agent": {
        const a = line.activity;
        if (a === "text") return { icon: "✦", tone: "agent", parts: [step, " says: ", clip(line.text)] };
        if (a === "tool_call") return { icon: "⚙", tone: "agent", parts: [step, " calls ", h("b", null, s(line.tool)), line.input ? ` ${clip(line.input, 160)}` : ""] };
        if (a === "tool_result") return { icon: line.error ? "✗" : "←", tone: line.error ? "bad" : "agent-dim", parts: [line.tool ? h("b", null, s(line.tool)) : "tool", line.error ? " failed: " : " → ", clip(line.output, 160)] };
        if (a === "error") return { icon: "!", tone: "bad", parts: [step, " error: ", clip(line.message)] };
        return null;
      }
      case "usage":
        return null; // shown in the summary and step list instead
      case "agent_finished": {
        const usage = fmtUsage(line.usage);
        return { icon: line.succeeded ? "✓" : "✗", tone: line.succeeded ? "agent" : "bad", parts: [`Agent ${s(line.agent)} of `, step, ` finished in ${fmtDuration(line.duration_ms)}`, usage ? ` · ${usage.tokens}${usage.cost ? " · " + usage.cost : ""}` : "", line.reason ? ` · ${line.reason}` : ""] };
      }
      case "budget_exceeded":
        return { icon: "$", tone: "bad", parts: ["Budget ", h("b", null, s(line.limit)), " exceeded in ", step, `: ${s(line.reason)}`] };
      case "agent_retry":
        return { icon: "↻", tone: "warn", parts: [`Agent retry ${s(line.attempt)}/${s(line.max_attempts)} of `, step, ` in ${fmtDuration(line.delay_ms)}: ${s(line.reason)}`] };
      case "egress":
        if (line.decision === "allowed") return { icon: "⇄", tone: "muted", parts: [`Network: ${s(line.host)}${line.port ? ":" + line.port : ""} allowed`] };
        return { icon: "⊘", tone: "warn", parts: [`Network: ${s(line.host || "(unknown host)")}${line.port ? ":" + line.port : ""} ${s(line.decision)}: ${s(line.reason)}`] };
      case "warning":
        return { icon: "⚠", tone: "warn", parts: [`Warning: ${s(line.message)}`] };
      case "run_finished": {
        const ok = line.status === "succeeded" || line.status === "no_changes";
        return { icon: ok ? "✓" : "■", tone: ok ? "good" : "bad", parts: ["Run ", h("b", null, words(line.status)), ` after ${fmtDuration(line.duration_ms)}`, line.reason ? `: ${line.reason}` : ""] };
      }
      default:
        return line.type ? { icon: "·", tone: "muted", parts: [String(line.type).replace(/_/g, " ")] } : null;
    }
  }

  function clip(text, max = 400) {
    const t = String(text || "").replace(/\s+/g, " ").trim();
    return t.length > max ? `${t.slice(0, max - 1)}…` : t;
  }

  // ---------------------------------------------------------------------------------------
  // Views. Each gets a fresh `view` context; leaving the route stops its timers and streams.

  function newView() {
    const controller = new AbortController();
    const timers = [];
    return {
      signal: controller.signal,
      every(ms, fn) {
        timers.push(setInterval(() => { if (!document.hidden) fn(); }, ms));
      },
      later(ms, fn) {
        timers.push(setTimeout(fn, ms));
      },
      close() {
        controller.abort();
        timers.forEach((t) => { clearInterval(t); clearTimeout(t); });
      },
      get alive() {
        return !controller.signal.aborted;
      },
    };
  }

  let current = null;

  function route() {
    if (current) current.close();
    current = newView();
    const app = clear(document.getElementById("app"));
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, query] = hash.split("?");
    const params = new URLSearchParams(query || "");
    let section = "runs";
    window.scrollTo(0, 0);
    if (auth.blocked) {
      app.appendChild(h("div", { class: "empty" }, "Sign in to see this daemon's runs."));
      return;
    }
    const run = path.match(/^\/runs\/([^/]+)$/);
    if (path === "/" || path === "/runs") runList(app, current, params);
    else if (run) runDetail(app, current, decodeURIComponent(run[1]));
    else if (path === "/schedules") { section = "schedules"; schedules(app, current); }
    else if (path === "/submit") { section = "submit"; submit(app, current); }
    else {
      section = "";
      app.appendChild(emptyState("Nothing here", "This address is not a page of the dashboard.", h("a", { class: "btn", href: "#/" }, "Back to runs")));
    }
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", link.dataset.nav === section);
      if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  function emptyState(title, text, action) {
    return h("div", { class: "empty" }, h("h2", null, title), h("p", { class: "muted" }, text), action || null);
  }

  function pageHead(title, ...rest) {
    return h("div", { class: "page-head" }, h("h1", null, title), h("div", { class: "page-head-end" }, rest));
  }

  /** Updates the clocks below `root`: `data-started` (time since) and `data-rel` ("3 min ago"). */
  function tickTimes(root) {
    for (const el of root.querySelectorAll("[data-started]")) {
      const t = parseTime(el.dataset.started);
      if (t !== null) el.textContent = fmtDuration(Date.now() - t);
    }
    for (const el of root.querySelectorAll("[data-rel]")) el.textContent = fmtRelative(el.dataset.rel);
  }

  // --- Run list ------------------------------------------------------------------------------

  const knownTasks = new Set();

  function runList(app, view, params) {
    const filter = { status: params.get("status") || "", task: params.get("task") || "" };
    document.title = "Runs · maxions";
    const statusSelect = h("select", { id: "filter-status", "aria-label": "Status" },
      h("option", { value: "" }, "All statuses"),
      STATUSES.map((s) => h("option", { value: s }, label(s))));
    statusSelect.value = filter.status;
    const taskSelect = h("select", { id: "filter-task", "aria-label": "Task" });
    const setFilter = () => {
      const q = new URLSearchParams();
      if (statusSelect.value) q.set("status", statusSelect.value);
      if (taskSelect.value) q.set("task", taskSelect.value);
      const s = q.toString();
      location.hash = s ? `#/?${s}` : "#/";
    };
    statusSelect.addEventListener("change", setFilter);
    taskSelect.addEventListener("change", setFilter);
    const fillTasks = () => {
      if (filter.task) knownTasks.add(filter.task);
      const want = [...knownTasks].sort();
      const have = [...taskSelect.options].slice(1).map((o) => o.value);
      if (taskSelect.options.length && want.join("\n") === have.join("\n")) return;
      clear(taskSelect);
      taskSelect.appendChild(h("option", { value: "" }, "All tasks"));
      for (const t of want) taskSelect.appendChild(h("option", { value: t }, t));
      taskSelect.value = filter.task;
    };
    fillTasks();

    const counts = h("div", { class: "counts", id: "run-counts" });
    const clearFilters = h("a", { class: "btn btn-ghost btn-small", href: "#/", hidden: !(filter.status || filter.task) }, "Clear filters");
    app.appendChild(pageHead("Runs", counts));
    app.appendChild(h("div", { class: "toolbar" },
      h("div", { class: "filters" }, statusSelect, taskSelect, clearFilters),
      h("a", { class: "btn btn-primary", href: "#/submit" }, "New task")));
    const tbody = h("tbody", { id: "runs-body" });
    const table = h("table", { class: "runs", id: "runs" },
      h("thead", null, h("tr", null,
        h("th", { class: "col-status" }, "Status"), h("th", null, "Task"), h("th", null, "Trigger"),
        h("th", null, "Started"), h("th", { class: "num" }, "Duration"), h("th", { class: "num" }, "Cost"),
        h("th", null, "Pull request"))),
      tbody);
    const banner = h("div", { class: "banner error", hidden: true });
    const more = h("button", { class: "btn", type: "button", id: "load-more", hidden: true }, "Load older runs");
    const empty = h("div", { class: "empty", hidden: true });
    app.appendChild(banner);
    app.appendChild(h("div", { class: "card table-card" }, table, empty));
    app.appendChild(h("div", { class: "more" }, more));

    let first = [];
    let older = [];
    let drawn = null;
    let next = null;
    let loaded = false;
    const streams = new Map(); // run id -> AbortController of a stream followed for changes

    const query = (before) => {
      const q = new URLSearchParams({ limit: "50" });
      if (filter.status) q.set("status", filter.status);
      if (filter.task) q.set("task", filter.task);
      if (before) q.set("before", before);
      return `/maxions?${q}`;
    };

    let refreshing = false;
    let again = false;
    const refresh = async () => {
      if (refreshing) { again = true; return; }
      refreshing = true;
      try {
        const { data } = await api(query(), { signal: view.signal });
        if (!view.alive) return;
        first = (data && data.runs) || [];
        if (!older.length) next = data.next || null;
        loaded = true;
        banner.hidden = true;
        render();
        watchActive();
      } catch (error) {
        if (!view.alive || error instanceof Blocked || error.name === "AbortError") return;
        banner.hidden = false;
        banner.textContent = errorText(error);
      } finally {
        refreshing = false;
        if (again && view.alive) { again = false; refresh(); }
      }
    };

    more.addEventListener("click", async () => {
      if (!next) return;
      more.disabled = true;
      try {
        const { data } = await api(query(next), { signal: view.signal });
        older = older.concat(data.runs || []);
        next = data.next || null;
        render();
      } catch (error) {
        if (!(error instanceof Blocked)) toast(errorText(error), "error");
      } finally {
        more.disabled = false;
      }
    });

    // A refresh as soon as a shown run's log says its state changed, not only at the next poll.
    let soon = 0;
    const refreshSoon = () => {
      clearTimeout(soon);
      soon = setTimeout(() => view.alive && refresh(), 150);
    };
    const watchActive = () => {
      const active = first.filter((r) => ACTIVE.has(r.status)).slice(0, 3).map((r) => r.id);
      for (const [id, controller] of streams) {
        if (!active.includes(id)) { controller.abort(); streams.delete(id); }
      }
      for (const id of active) {
        if (streams.has(id)) continue;
        const controller = new AbortController();
        view.signal.addEventListener("abort", () => controller.abort(), { once: true });
        streams.set(id, controller);
        (async () => {
          // Start at the end of what is logged: only news matter here.
          let after = 0;
          try {
            const { data } = await api(`/maxions/${encodeURIComponent(id)}`, { signal: controller.signal });
            after = (data && data.last_seq) || 0;
          } catch {
            return;
          }
          await followStream(id, after, controller.signal, {
            state() {},
            event(line) { if (CHANGES_STATE.has(line.type)) refreshSoon(); },
            end() { refreshSoon(); },
          });
          streams.delete(id);
        })();
      }
    };

    const render = () => {
      const seen = new Set(first.map((r) => r.id));
      const runs = first.concat(older.filter((r) => !seen.has(r.id)));
      let added = false;
      for (const r of runs) {
        if (r.task && !knownTasks.has(r.task)) { knownTasks.add(r.task); added = true; }
      }
      if (added) fillTasks();
      // Rows are rebuilt only when a run changed (keeping the keyboard focus on a row);
      // the clocks tick on their own.
      const key = JSON.stringify(runs);
      if (key !== drawn) {
        drawn = key;
        clear(tbody);
        for (const r of runs) tbody.appendChild(runRow(r));
      }
      const byStatus = {};
      for (const r of first) byStatus[r.status] = (byStatus[r.status] || 0) + 1;
      clear(counts);
      for (const s of ["running", "queued", "failed"]) {
        if (byStatus[s]) counts.appendChild(h("span", { class: "count", dataset: { status: s } }, h("b", null, String(byStatus[s])), ` ${words(s)}`));
      }
      table.hidden = runs.length === 0;
      empty.hidden = !(loaded && runs.length === 0);
      clear(empty);
      if (filter.status || filter.task) {
        append(empty, [h("h2", null, "No runs match"), h("p", { class: "muted" }, "No run has this status and task. "), h("a", { class: "btn", href: "#/" }, "Clear filters")]);
      } else {
        append(empty, [h("h2", null, "No runs yet"), h("p", { class: "muted" }, "Drop a task file into tasks/ or submit one here; its run shows up at once."), h("a", { class: "btn btn-primary", href: "#/submit" }, "Submit a task")]);
      }
      more.hidden = !next;
    };

    const loading = h("div", { class: "loading" }, "Loading runs…");
    empty.hidden = false;
    empty.appendChild(loading);
    refresh();
    view.every(POLL_MS, refresh);
    view.every(1000, () => tickTimes(app));
  }

  function runRow(r) {
    const href = `#/runs/${encodeURIComponent(r.id)}`;
    const started = r.started_at || r.queued_at;
    const pr = safeUrl(r.pull_request);
    const usage = fmtUsage(r.usage);
    const tr = h("tr", { class: "run-row", dataset: { run: r.id, status: r.status }, tabindex: "0" },
      h("td", { class: "col-status" }, badge(r.status)),
      h("td", { class: "col-task" },
        h("a", { class: "task-link", href }, r.task || r.task_file || "(unnamed)"),
        h("div", { class: "sub mono" }, r.id, r.attempt > 1 ? h("span", { class: "attempt" }, `attempt ${r.attempt}`) : null)),
      h("td", { class: "col-trigger" }, h("span", { class: "trigger", title: r.reason || r.trigger || "" }, r.trigger || "—")),
      h("td", { class: "col-time", title: fmtFull(started) }, started ? h("span", { dataset: { rel: started } }, fmtRelative(started)) : "—",
        h("div", { class: "sub" }, r.started_at ? fmtClock(r.started_at) : r.queued_at ? "queued" : "")),
      h("td", { class: "num mono" }, h("span", { dataset: r.status === "running" && r.started_at ? { started: r.started_at } : {} }, fmtDuration(liveDuration(r)))),
      h("td", { class: "num mono", title: usage ? usage.title : "" }, usage && usage.cost ? usage.cost : usage ? usage.tokens.split(" · ")[0] : "—"),
      h("td", { class: "col-pr" }, pr ? h("a", { href: pr, target: "_blank", rel: "noopener noreferrer", class: "pr-link", onclick: (e) => e.stopPropagation() }, icon("pr"), prLabel(pr)) : h("span", { class: "muted" }, "—")));
    const go = (e) => {
      if (e.target.closest("a")) return;
      location.hash = href;
    };
    tr.addEventListener("click", go);
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") go(e); });
    return tr;
  }

  /** `owner/repo#12` from a pull request URL, or the URL. */
  function prLabel(url) {
    const m = url.match(/\/([^/]+)\/([^/]+)\/pull\/(\d+)/);
    return m ? `${m[2]}#${m[3]}` : url.replace(/^https?:\/\//, "");
  }

  // --- Run detail ----------------------------------------------------------------------------

  function runDetail(app, view, id) {
    document.title = `${id} · maxions`;
    const head = h("div", { class: "card run-head", id: "run-head" });
    const steps = h("ol", { class: "steps", id: "steps" });
    const logEl = h("div", { class: "log", id: "log", role: "log", "aria-live": "off", tabindex: "0" });
    const logState = h("span", { class: "log-state", id: "log-state", dataset: { state: "connecting" } }, "connecting");
    const jump = h("button", { class: "btn btn-small btn-dark", id: "follow", type: "button", hidden: true }, icon("down"), "Jump to latest");
    const wrapToggle = h("label", { class: "wrap-toggle" }, h("input", { type: "checkbox", id: "wrap" }), "Wrap");
    const banner = h("div", { class: "banner error", hidden: true });

    app.appendChild(h("nav", { class: "crumbs" }, h("a", { href: "#/" }, icon("back"), "Runs")));
    app.appendChild(banner);
    app.appendChild(head);
    app.appendChild(h("div", { class: "detail-grid" },
      h("section", { class: "card steps-card" },
        h("div", { class: "card-title" }, h("h2", null, "Steps"), h("span", { class: "muted small", id: "steps-summary" })),
        steps),
      h("section", { class: "card log-card" },
        h("div", { class: "log-bar" }, h("h2", null, "Log"), logState, h("span", { class: "spacer" }), wrapToggle, jump),
        logEl)));

    // The log takes the rest of the window below it, so following it needs no page scrolling.
    const fit = () => {
      if (!logEl.isConnected) return;
      const top = logEl.getBoundingClientRect().top + window.scrollY;
      const height = `${Math.max(320, Math.floor(window.innerHeight - top - 28))}px`;
      if (logEl.style.height === height) return;
      // A box resized is not a reader scrolling up: a log that followed its end still does.
      const following = log.stick;
      logEl.style.height = height;
      if (following) log.toBottom();
    };
    window.addEventListener("resize", fit);
    view.signal.addEventListener("abort", () => window.removeEventListener("resize", fit), { once: true });

    const log = new LogView(logEl);
    log.onStickChange = (atBottom) => { jump.hidden = atBottom; };
    jump.addEventListener("click", () => log.toBottom());
    wrapToggle.querySelector("input").addEventListener("change", (e) => {
      const following = log.stick;
      logEl.classList.toggle("wrap", e.target.checked);
      if (following) log.toBottom();
    });

    let detail = null;
    let drawn = "";
    let streamStarted = false;

    /** A duration that grows while its run or step runs: `data-started` says since when. */
    const clock = (item) => {
      const running = item.duration_ms === null || item.duration_ms === undefined;
      return h("span", { class: "mono", dataset: running && item.started_at ? { started: item.started_at } : {} },
        fmtDuration(liveDuration(item)));
    };
    const tick = () => tickTimes(app);

    const load = async () => {
      try {
        const { data } = await api(`/maxions/${encodeURIComponent(id)}`, { signal: view.signal });
        if (!view.alive) return;
        detail = data;
        banner.hidden = true;
        // Redrawn only when something changed, so that a button is not replaced under the
        // pointer (or the keyboard focus) every poll; the clocks tick on their own.
        const key = JSON.stringify(data);
        if (key !== drawn) {
          drawn = key;
          renderHead();
          renderSteps();
          fit();
        }
        tick();
        if (!streamStarted) startStream();
      } catch (error) {
        if (!view.alive || error instanceof Blocked || error.name === "AbortError") return;
        if (error.status === 404) {
          clear(app).appendChild(emptyState("Run not found", `No run has the id ${id}. It may have been deleted.`, h("a", { class: "btn", href: "#/" }, "Back to runs")));
          view.close();
          return;
        }
        banner.hidden = false;
        banner.textContent = errorText(error);
      }
    };

    let soon = 0;
    const loadSoon = () => {
      clearTimeout(soon);
      soon = setTimeout(() => view.alive && load(), 200);
    };

    const startStream = () => {
      streamStarted = true;
      const setState = (state, text) => {
        logState.dataset.state = state;
        logState.textContent = text || state;
      };
      followStream(id, 0, view.signal, {
        state(s) {
          if (s === "live") {
            if (detail && detail.status === "queued") setState("waiting", "waiting for the run to start");
            else setState("live", "live");
          }
          else if (s === "reconnecting") setState("reconnecting", "reconnecting…");
          else if (s === "gone") setState("ended", "run deleted");
          else setState("connecting", "connecting…");
        },
        event(line) {
          if (logState.dataset.state !== "live" || logState.textContent !== "live") setState("live", "live");
          log.add(line);
          if (CHANGES_STATE.has(line.type)) loadSoon();
        },
        end(data) {
          setState("ended", `finished · ${words(data.status || (detail && detail.status))}`);
          loadSoon();
        },
      });
    };

    const action = async (button, path, done) => {
      button.disabled = true;
      try {
        const res = await api(path, { method: "POST", signal: view.signal });
        done(res.data);
      } catch (error) {
        if (!(error instanceof Blocked) && error.name !== "AbortError") toast(errorText(error), "error");
      } finally {
        button.disabled = false;
      }
    };

    const renderHead = () => {
      const d = detail;
      document.title = `${d.task || id} · ${label(d.status)} · maxions`;
      clear(head);
      head.dataset.status = d.status;
      const actions = h("div", { class: "actions" });
      if (ACTIVE.has(d.status)) {
        const cancel = h("button", { class: "btn btn-danger", id: "cancel", type: "button" }, icon("cancel"), d.status === "queued" ? "Cancel" : "Cancel run");
        cancel.addEventListener("click", () => action(cancel, `/maxions/${encodeURIComponent(id)}/kill`, (run) => {
          toast(run && run.status === "cancelled" ? "Run cancelled." : "Cancelling the run…");
          load();
        }));
        actions.appendChild(cancel);
      } else {
        const rerun = h("button", { class: "btn", id: "rerun", type: "button" }, icon("rerun"), "Re-run");
        rerun.addEventListener("click", () => action(rerun, `/maxions/${encodeURIComponent(id)}/rerun`, (run) => {
          toast("Queued a new run.");
          if (run && run.id) location.hash = `#/runs/${encodeURIComponent(run.id)}`;
        }));
        actions.appendChild(rerun);
      }
      head.appendChild(h("div", { class: "run-title" },
        h("div", { class: "run-title-main" },
          badge(d.status, "badge-large"),
          h("div", null,
            h("h1", { id: "run-task" }, d.task || d.task_file || "(unnamed)"),
            h("div", { class: "sub mono", id: "run-id" }, d.id, d.attempt > 1 ? h("span", { class: "attempt" }, `attempt ${d.attempt}`) : null))),
        actions));
      if (d.reason) {
        const bad = !["succeeded", "no_changes"].includes(d.status);
        head.appendChild(h("div", { class: `reason ${bad ? "bad" : ""}`, id: "run-reason" }, d.reason));
      }
      const usage = fmtUsage(d.usage);
      const facts = [
        ["Trigger", d.trigger || "—"],
        ["Branch", d.branch ? h("code", null, d.branch) : "—"],
        ["Started", d.started_at ? h("span", { title: fmtFull(d.started_at) }, fmtClock(d.started_at)) : d.queued_at ? h("span", { title: fmtFull(d.queued_at) }, `queued ${fmtRelative(d.queued_at)}`) : "—"],
        ["Duration", d.status === "running" ? clock(d) : fmtDuration(liveDuration(d))],
        ["Commit", d.commit ? h("code", { title: d.commit }, shortSha(d.commit)) : "—"],
        ["Usage", usage ? h("span", { title: usage.title }, usage.tokens) : "—"],
        ["Cost", usage && usage.cost ? usage.cost : "—"],
      ];
      head.appendChild(h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", { class: "fact" }, h("dt", null, k), h("dd", null, v)))));
      head.appendChild(prBlock(d));
    };

    const renderSteps = () => {
      clear(steps);
      const list = detail.steps || [];
      const done = list.filter((s) => s.status && s.status !== "running" && s.status !== "pending").length;
      document.getElementById("steps-summary").textContent = list.length ? `${done}/${list.length}` : "";
      if (!list.length) {
        steps.appendChild(h("li", { class: "steps-empty muted" }, detail.status === "queued" ? "Waiting in the queue." : "No steps ran."));
        return;
      }
      for (const s of list) {
        const usage = fmtUsage(s.usage);
        const meta = [];
        if (s.kind) meta.push(h("span", { class: "chip" }, s.kind));
        if (liveDuration(s) !== null) meta.push(s.status === "running" ? clock(s) : h("span", { class: "mono" }, fmtDuration(liveDuration(s))));
        if (s.exit_code !== null && s.exit_code !== undefined) meta.push(h("span", { class: `mono ${s.exit_code === 0 ? "" : "exit-bad"}` }, `exit ${s.exit_code}`));
        if (s.fix_rounds) meta.push(h("span", { class: "fix" }, `${s.fix_rounds} fix round${s.fix_rounds === 1 ? "" : "s"}`));
        if (usage) meta.push(h("span", { title: usage.title }, usage.tokens));
        if (usage && usage.cost) meta.push(h("span", { class: "mono" }, usage.cost));
        const li = h("li", { class: "step", dataset: { step: s.id, status: s.status || "pending" }, title: "Show in the log" },
          h("span", { class: "step-icon", "aria-hidden": "true" }),
          h("div", { class: "step-body" },
            h("div", { class: "step-line" }, h("span", { class: "step-id" }, s.id), h("span", { class: "step-status" }, label(s.status || "pending"))),
            h("div", { class: "step-meta" }, meta),
            s.reason ? h("div", { class: "step-reason" }, s.reason) : null));
        li.addEventListener("click", () => {
          const marker = [...logEl.querySelectorAll("[data-step-start]")].find((el) => el.dataset.stepStart === s.id);
          if (marker) {
            log.stick = false;
            jump.hidden = false;
            logEl.scrollTop = marker.offsetTop - logEl.offsetTop - 8;
            marker.classList.add("flash");
            setTimeout(() => marker.classList.remove("flash"), 1200);
          }
        });
        steps.appendChild(li);
      }
    };

    load();
    // A finished run changes no more; until then its summary is asked for every poll.
    view.every(POLL_MS, () => { if (!detail || ACTIVE.has(detail.status)) load(); });
    view.every(1000, tick);
  }

  function prBlock(d) {
    const pr = d.pull_request_detail;
    const url = safeUrl((pr && pr.url) || d.pull_request);
    if (url) {
      return h("div", { class: "pr-block", id: "pr" },
        icon("pr"),
        h("span", null, "Pull request "),
        h("a", { href: url, target: "_blank", rel: "noopener noreferrer", id: "pr-link" }, pr && pr.number ? `#${pr.number}` : prLabel(url)),
        pr && pr.draft ? h("span", { class: "chip" }, "draft") : null);
    }
    if (pr && pr.opened === false) {
      return h("div", { class: "pr-block would", id: "pr" },
        icon("pr"),
        h("span", { class: "muted" }, "Would open "),
        h("b", { id: "pr-title" }, pr.title || "(untitled)"),
        pr.draft ? h("span", { class: "chip" }, "draft") : null,
        h("span", { class: "muted small" }, " · no forge is configured, so no pull request was opened"));
    }
    return h("div", { class: "pr-block none", hidden: true });
  }

  // --- Schedules -----------------------------------------------------------------------------

  function schedules(app, view) {
    document.title = "Schedules · maxions";
    app.appendChild(pageHead("Schedules"));
    const body = h("div", { class: "card table-card" }, h("div", { class: "loading" }, "Loading schedules…"));
    app.appendChild(body);
    const load = async () => {
      try {
        const { data } = await api("/schedules", { signal: view.signal });
        if (!view.alive) return;
        const list = (data && data.schedules) || [];
        clear(body);
        if (!list.length) {
          body.appendChild(emptyState("No schedules", "A task file with a `schedule:` (5-field cron) runs at its times; none is loaded now.", h("a", { class: "btn", href: "#/submit" }, "Submit a task")));
          return;
        }
        body.appendChild(h("table", { class: "runs", id: "schedules" },
          h("thead", null, h("tr", null, h("th", null, "Task"), h("th", null, "Schedule"), h("th", null, "Time zone"), h("th", null, "Next runs"))),
          h("tbody", null, list.map((s) => h("tr", { dataset: { task: s.task } },
            h("td", { class: "col-task" }, h("a", { class: "task-link", href: `#/?task=${encodeURIComponent(s.task)}` }, s.task), h("div", { class: "sub mono" }, s.task_file || "")),
            h("td", null, h("code", { class: "cron" }, s.schedule)),
            h("td", null, s.timezone || "UTC"),
            h("td", null, h("ol", { class: "next-times" }, (s.next || []).map((t, i) => h("li", { title: fmtFull(t), class: i === 0 ? "soonest" : "" },
              h("span", { class: "rel" }, fmtRelative(t)), h("span", { class: "abs" }, fmtClock(t, false)))))))))));
      } catch (error) {
        if (!view.alive || error instanceof Blocked || error.name === "AbortError") return;
        clear(body).appendChild(h("div", { class: "banner error" }, errorText(error)));
      }
    };
    load();
    view.every(10000, load);
  }

  // --- Submit --------------------------------------------------------------------------------

  let draft = { name: "", yaml: EXAMPLE_TASK };

  function submit(app, view) {
    document.title = "Submit a task · maxions";
    app.appendChild(pageHead("Submit a task"));
    const name = h("input", { id: "task-name", name: "name", type: "text", placeholder: "dark-mode", spellcheck: "false", autocomplete: "off", pattern: "[a-z0-9][a-z0-9._\\-]{0,63}", value: draft.name });
    const yaml = h("textarea", { id: "task-yaml", name: "yaml", spellcheck: "false", wrap: "off", autocapitalize: "off", "aria-label": "Task file (YAML)" });
    yaml.value = draft.yaml;
    const gutter = h("div", { class: "gutter", id: "gutter", "aria-hidden": "true" });
    const bands = h("div", { class: "bands", "aria-hidden": "true" });
    const editor = h("div", { class: "editor" }, gutter, h("div", { class: "editor-main" }, bands, yaml));
    const diagList = h("ul", { class: "diagnostics", id: "diagnostics" });
    const diagBox = h("div", { class: "diag-box", id: "diag-box", hidden: true },
      h("div", { class: "diag-head" }, h("b", { id: "diag-title" }, "")), diagList,
      h("div", { class: "diag-foot muted small" }, "Click a problem to go to its line."));
    const error = h("div", { class: "banner error", id: "submit-error", hidden: true });
    const button = h("button", { class: "btn btn-primary", id: "submit", type: "submit" }, "Submit");
    const form = h("form", { class: "card submit-card", id: "submit-form", novalidate: true },
      h("div", { class: "field" },
        h("label", { for: "task-name" }, "Name ", h("span", { class: "label-note" }, "optional · the file becomes tasks/NAME.yaml")),
        name),
      h("div", { class: "field" }, h("label", { for: "task-yaml" }, "Task file ", h("span", { class: "label-note" }, "YAML · Ctrl+Enter submits")), editor),
      error,
      h("div", { class: "actions" }, h("span", { class: "muted small" }, "Checked like `maxions validate` before anything is written."), button));
    const key = (k, text) => h("div", { class: "ref-row" }, h("dt", null, h("code", null, k)), h("dd", null, text));
    const reference = h("aside", { class: "card ref-card" },
      h("div", { class: "card-title" }, h("h2", null, "Task file keys")),
      h("dl", { class: "ref" },
        key("task", "What to do, in plain words. Data for the agent, never a template."),
        key("repo", "owner/name, or a clone URL (https://…, file://…)."),
        key("blueprint", "How: a name in blueprints/ or a path. Default: default."),
        key("base", "Branch to start from. Default: the repository's default branch."),
        key("branch", "Branch to push. Default: derived from the task's name, stable across re-runs."),
        key("vars", "Free-form values for the blueprint's templates."),
        key("schedule", "5-field cron. Makes it a recurring task: it is added to the schedules instead of run now."),
        key("timezone", "Time zone of the schedule. Default: UTC.")));
    app.appendChild(h("div", { class: "submit-grid" }, form, h("div", { class: "side" }, diagBox, reference)));

    let marks = new Map(); // line -> "error" | "warning"
    const lineHeight = () => parseFloat(getComputedStyle(yaml).lineHeight) || 20;
    const renderGutter = () => {
      const lines = yaml.value.split("\n").length;
      clear(gutter);
      const inner = h("div", { class: "gutter-inner" });
      for (let i = 1; i <= lines; i++) {
        const mark = marks.get(i);
        inner.appendChild(h("div", { class: `gl${mark ? " has-" + mark : ""}`, dataset: { line: i } }, String(i)));
      }
      gutter.appendChild(inner);
      clear(bands);
      const lh = lineHeight();
      for (const [line, mark] of marks) {
        bands.appendChild(h("div", { class: `band ${mark}`, dataset: { line }, style: { top: `${(line - 1) * lh}px`, height: `${lh}px` } }));
      }
      sync();
    };
    const sync = () => {
      const y = -yaml.scrollTop;
      if (gutter.firstChild) gutter.firstChild.style.transform = `translateY(${y}px)`;
      bands.style.transform = `translate(${-yaml.scrollLeft}px, ${y}px)`;
    };
    yaml.addEventListener("scroll", sync);
    yaml.addEventListener("input", () => {
      draft.yaml = yaml.value;
      renderGutter();
    });
    name.addEventListener("input", () => { draft.name = name.value; });
    yaml.addEventListener("keydown", (e) => {
      if (e.key === "Tab" && !e.shiftKey && !e.ctrlKey && !e.metaKey) {
        e.preventDefault();
        yaml.setRangeText("  ", yaml.selectionStart, yaml.selectionEnd, "end");
        yaml.dispatchEvent(new Event("input"));
      } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        form.requestSubmit();
      }
    });

    const goTo = (line, column) => {
      const lines = yaml.value.split("\n");
      const l = Math.min(Math.max(1, line), lines.length);
      let start = 0;
      for (let i = 0; i < l - 1; i++) start += lines[i].length + 1;
      const end = start + lines[l - 1].length;
      const col = Math.min(Math.max(0, (column || 1) - 1), lines[l - 1].length);
      yaml.focus();
      yaml.setSelectionRange(start + col, end);
      const lh = lineHeight();
      yaml.scrollTop = Math.max(0, (l - 1) * lh - yaml.clientHeight / 3);
      sync();
      const row = gutter.querySelector(`.gl[data-line="${l}"]`);
      if (row) {
        row.classList.add("flash");
        setTimeout(() => row.classList.remove("flash"), 1200);
      }
    };

    const showDiagnostics = (diagnostics) => {
      marks = new Map();
      clear(diagList);
      const sorted = [...diagnostics].sort((a, b) => (a.line || 0) - (b.line || 0) || (a.column || 0) - (b.column || 0));
      for (const d of sorted) {
        const severity = d.severity === "warning" ? "warning" : "error";
        if (d.line) {
          if (marks.get(d.line) !== "error") marks.set(d.line, severity);
        }
        const where = d.line ? `${d.line}:${d.column || 1}` : (d.file || "file");
        const item = h("li", { class: `diag ${severity}`, dataset: { line: d.line || "", column: d.column || "", severity, code: d.code || "" } },
          h("button", { type: "button", class: "diag-btn" },
            h("span", { class: "diag-sev" }, severity),
            h("span", { class: "diag-where mono" }, where),
            h("span", { class: "diag-msg" }, d.message || d.code || "problem"),
            d.code ? h("span", { class: "diag-code mono" }, d.code) : null),
          d.help ? h("div", { class: "diag-help" }, d.help) : null);
        if (d.line) item.querySelector("button").addEventListener("click", () => goTo(d.line, d.column));
        diagList.appendChild(item);
      }
      const errors = sorted.filter((d) => d.severity !== "warning").length;
      const warnings = sorted.length - errors;
      const parts = [];
      if (errors) parts.push(`${errors} error${errors === 1 ? "" : "s"}`);
      if (warnings) parts.push(`${warnings} warning${warnings === 1 ? "" : "s"}`);
      document.getElementById("diag-title").textContent = `The task file has ${parts.join(" and ") || "problems"}`;
      diagBox.hidden = sorted.length === 0;
      renderGutter();
    };

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      error.hidden = true;
      button.disabled = true;
      button.textContent = "Submitting…";
      try {
        const json = { yaml: yaml.value };
        if (name.value.trim()) json.name = name.value.trim();
        const { data } = await api("/maxions", { method: "POST", json, signal: view.signal });
        showDiagnostics([]);
        draft = { name: "", yaml: EXAMPLE_TASK };
        const file = `tasks/${(data && data.task_file) || "the task file"}`;
        if (data && data.run && data.run.id) {
          toast(`Wrote ${file}; its run is queued.`);
          location.hash = `#/runs/${encodeURIComponent(data.run.id)}`;
        } else if (data && data.schedule) {
          toast(`Wrote ${file}; it runs on its schedule.`);
          location.hash = "#/schedules";
        } else if (data && data.note) {
          toast(`Wrote ${file}, but ${data.note}`, "error");
          location.hash = `#/?task=${encodeURIComponent(data.task)}`;
        } else {
          // Written and queued, but the answer names no run (it may have started in between):
          // its newest run is the one.
          const id = data && data.task ? await newestRun(data.task, view.signal) : null;
          toast(`Wrote ${file}; its run is queued.`);
          location.hash = id ? `#/runs/${encodeURIComponent(id)}` : `#/?task=${encodeURIComponent((data && data.task) || "")}`;
        }
      } catch (err) {
        if (err instanceof Blocked || err.name === "AbortError") return;
        if (err.code === "invalid_task" && Array.isArray(err.body.diagnostics)) {
          showDiagnostics(err.body.diagnostics);
          const first = err.body.diagnostics.find((d) => d.line);
          if (!first) { error.hidden = false; error.textContent = err.message; }
        } else {
          showDiagnostics([]);
          error.hidden = false;
          error.textContent = errorText(err);
        }
      } finally {
        button.disabled = false;
        button.textContent = "Submit";
      }
    });

    renderGutter();
    if (!draft.name) name.focus();
  }

  /** The id of `task`'s newest run, asked for a few times while the daemon records it. */
  async function newestRun(task, signal) {
    for (let i = 0; i < 20 && !signal.aborted; i++) {
      try {
        const { data } = await api(`/maxions?task=${encodeURIComponent(task)}&limit=1`, { signal });
        const run = data && data.runs && data.runs[0];
        if (run && run.id) return run.id;
      } catch (error) {
        if (error instanceof Blocked || error.name === "AbortError") return null;
      }
      await sleep(250, signal);
    }
    return null;
  }

  // ---------------------------------------------------------------------------------------
  // Start: ask the daemon whether a token is needed, then show the page.

  async function start() {
    document.getElementById("token-form").addEventListener("submit", submitToken);
    document.getElementById("sign-out").addEventListener("click", () => {
      setToken("");
      memoryToken = "";
      auth.accepted = false;
      document.getElementById("sign-out").hidden = true;
      if (current) current.close();
      clear(document.getElementById("app"));
      promptToken("");
    });
    window.addEventListener("hashchange", route);
    try {
      const res = await fetch("/api/config", { headers: { Accept: "application/json" }, cache: "no-store" });
      const config = res.ok ? await res.json() : {};
      auth.mode = config.auth === "open" ? "open" : "token";
      connection("ok");
    } catch {
      auth.mode = "token";
      connection("down");
    }
    fetch("/healthz", { cache: "no-store" }).then((r) => r.json()).then((health) => {
      if (health && health.version) {
        document.querySelector(".brand").appendChild(h("span", { class: "version" }, `v${health.version}`));
      }
    }).catch(() => {});
    if (auth.mode === "token") {
      auth.accepted = Boolean(token());
      if (!token()) {
        promptToken("");
        return;
      }
      document.getElementById("sign-out").hidden = false;
    }
    route();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
