#!/usr/bin/env bash
# Fuzzes the HTTP API of a real `maxions daemon` with schemathesis, against the checked-in
# OpenAPI document (schemas/openapi.json): every response must be documented (status, content
# type, headers, body schema) and none may be a 5xx.
#
#   scripts/schemathesis.sh                 # idempotent, no stdin, about a minute once built
#
# What it does: installs schemathesis (pinned by scripts/schemathesis-requirements.txt) into a
# venv outside the clone, builds maxions, makes a project in a temporary directory (a local
# `file://` repository, a quick blueprint, the API on a free port of 127.0.0.1 with a random
# token), starts `maxions daemon`, seeds real runs (a finished one, a failed one, a running one
# and a scheduled task) so that the `{id}` routes see real data, runs schemathesis, stops the
# daemon with SIGTERM and says what it found. All traffic goes to 127.0.0.1.
#
# Knobs (environment): MAXIONS_CACHE (default ~/.cache/maxions; the venv lives there),
# CARGO_TARGET_DIR, SCHEMATHESIS_MAX_EXAMPLES (default 50 per operation), SCHEMATHESIS_SEED
# (default 11; schemathesis prints the one it used), SCHEMATHESIS_WORKERS (default 1: with more,
# CPython 3.11's ast.parse, which Hypothesis calls from every worker thread, now and then fails
# with "AST constructor recursion depth mismatch", a tool error that is no finding).
# Exit status: 0 when schemathesis found nothing; non-zero otherwise, with the project directory
# (daemon log, schemathesis reports) kept and named.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
requirements=$repo/scripts/schemathesis-requirements.txt
cache=${MAXIONS_CACHE:-$HOME/.cache/maxions}
venv=$cache/schemathesis-venv
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-50}
seed=${SCHEMATHESIS_SEED:-11}
workers=${SCHEMATHESIS_WORKERS:-1}
# How long the daemon, a seeded run or schemathesis may take before the script gives up.
patience=90
# The checks that judge each response against the document; `ignored_auth` also replays
# requests without the token and expects them refused, and `use_after_free` expects a deleted
# run to be gone.
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth,use_after_free

say() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
fail() {
    say "$*"
    exit 1
}
started=$SECONDS

# --- schemathesis, in its own venv ------------------------------------------------------------
# The venv is rebuilt when the pinned requirements change (its stamp holds their checksum).
stamp=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x $venv/bin/schemathesis || $(cat "$venv/.maxions-stamp" 2>/dev/null) != "$stamp" ]]; then
    command -v python3 >/dev/null || fail "python3 is needed for schemathesis; install it (apt-get install python3 python3-venv)"
    say "installing schemathesis into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv" ||
        fail "python3 cannot make a venv; install its venv module (apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$requirements"
    echo "$stamp" >"$venv/.maxions-stamp"
fi
schemathesis=$venv/bin/schemathesis
python=$venv/bin/python
say "$("$schemathesis" --version)"

# --- maxions and its sandbox image --------------------------------------------------------------
command -v curl >/dev/null || fail "curl is needed to seed runs; install it (apt-get install curl)"
say "building maxions"
(cd "$repo" && cargo build --locked --quiet)
target=${CARGO_TARGET_DIR:-$repo/target}
[[ $target = /* ]] || target=$repo/$target
maxions=$target/debug/maxions
[[ -x $maxions ]] || fail "no binary at $maxions after cargo build"
# The seeded runs use the default image; this returns at once when it is up to date.
"$maxions" -q image build base sandbox

# --- the project --------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/maxions-schemathesis.XXXXXX")
project=$work/project
daemon_pid=
keep=1
cleanup() {
    local status=$?
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n $daemon_pid ]]; then
        # Sandboxes of a daemon that did not stop cleanly are labelled with its owner.
        local boot
        boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)
        docker ps -aq --filter "label=maxions.owner=$boot/$daemon_pid" 2>/dev/null |
            xargs -r docker rm -f -v >/dev/null 2>&1 || true
    fi
    if ((status == 0 && keep == 0)); then
        rm -rf "$work"
    else
        say "kept $work (daemon log: $work/daemon.log, reports: $work/report)"
    fi
}
trap cleanup EXIT

git_() { git -c user.name=maxions -c user.email=maxions@localhost -c init.defaultBranch=main "$@"; }
mkdir -p "$project/tasks" "$project/blueprints" "$work/seed"
echo "# a repository for the API fuzzer" >"$work/seed/README.md"
git_ -C "$work/seed" init -q
git_ -C "$work/seed" add -A
git_ -C "$work/seed" commit -q -m "initial commit"
git_ clone -q --bare "$work/seed" "$project/origin/repo.git"
origin=$project/origin/repo.git

cat >"$project/maxions.yaml" <<'YAML'
tasks_dir: tasks
blueprints_dir: blueprints
state_dir: .maxions
concurrency: 3
shutdown_grace: 2s
api:
  listen: 127.0.0.1:0
  token_env: MAXIONS_API_TOKEN
YAML
sandbox=$'sandbox:\n  network: none\n  timeout: 5m\n'
cat >"$project/blueprints/quick.yaml" <<YAML
name: quick
${sandbox}steps:
  - id: checkout
    checkout: {}
  - id: hello
    run: cat /workspace/repo/README.md
YAML
cat >"$project/blueprints/fails.yaml" <<YAML
name: fails
${sandbox}steps:
  - id: checkout
    checkout: {}
  - id: check
    run: echo 'the check fails'; exit 3
YAML
# A run that stays running until the daemon stops, so that kill, DELETE and the stream meet one.
cat >"$project/blueprints/slow.yaml" <<YAML
name: slow
${sandbox}steps:
  - id: checkout
    checkout: {}
  - id: wait
    run: for i in \$(seq 1 600); do echo "tick \$i"; sleep 1; done
YAML
task() { # stem blueprint [extra yaml]
    printf 'task: seeded by scripts/schemathesis.sh (%s)\nrepo: file://%s\nblueprint: %s\nbase: main\n%s' \
        "$1" "$origin" "$2" "${3:-}" >"$project/tasks/$1.yaml"
}

# --- the daemon -----------------------------------------------------------------------------------
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
say "starting maxions daemon in $project"
(cd "$project" && MAXIONS_API_TOKEN=$token NO_COLOR=1 exec "$maxions" -v daemon --config maxions.yaml \
    </dev/null >"$work/daemon.log" 2>&1) &
daemon_pid=$!

# Polls `$@` every 0.1 s until it succeeds; fails after $patience seconds saying `what`.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + patience))
    until "$@"; do
        kill -0 "$daemon_pid" 2>/dev/null || {
            tail -n 40 "$work/daemon.log" >&2
            fail "the daemon exited while waiting for $what"
        }
        ((SECONDS < deadline)) || {
            tail -n 40 "$work/daemon.log" >&2
            fail "timed out after ${patience}s waiting for $what"
        }
        sleep 0.1
    done
}
api_json=$project/.maxions/api.json
wait_for "$api_json" test -s "$api_json"
url=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["url"])' "$api_json")
case $url in
http://127.0.0.1:*) ;;
*) fail "the API listens on $url, not on 127.0.0.1: refusing to send traffic there" ;;
esac
# The token goes to curl in a file (and to schemathesis in its environment), never on a
# command line.
(umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$work/auth-header")
api() { curl -sS --max-time 10 -H @"$work/auth-header" "$@"; }
wait_for "GET $url/healthz" curl -fsS --max-time 2 -o /dev/null "$url/healthz"
say "API at $url"

# --- real data for the {id} routes ----------------------------------------------------------------
task hello quick
task broken fails
task slow slow
task nightly quick $'schedule: "0 9 * * 1"\ntimezone: Europe/Berlin\n'
finished() { test -s "$project/tasks/$1.result.json"; }
running() { grep -qs '"type":"step_started".*"step":"wait"' "$project"/tasks/slow.runs/*.jsonl; }
wait_for "the run of hello to finish" finished hello
wait_for "the run of broken to finish" finished broken
wait_for "the run of slow to reach its long step" running
runs=$(api "$url/maxions") || fail "GET /maxions failed: $runs"
"$python" - "$runs" <<'PY' || fail "GET /maxions does not list the seeded runs: $runs"
import json, sys
runs = json.loads(sys.argv[1])["runs"]
seen = {(r["task"], r["status"]) for r in runs}
for want in [("hello", "succeeded"), ("broken", "failed"), ("slow", "running")]:
    assert want in seen, f"missing {want} in {seen}"
for r in runs:
    print(f"  seeded run {r['id']}: {r['task']} {r['status']}", file=sys.stderr)
PY
schedules=$(api "$url/schedules") || fail "GET /schedules failed: $schedules"
grep -q '"nightly"' <<<"$schedules" || fail "GET /schedules does not list nightly: $schedules"

# --- schemathesis ---------------------------------------------------------------------------------
say "schemathesis: $max_examples examples per operation, seed $seed, $workers workers"
mkdir -p "$work/report"
set +e
(
    # Its own files (reports, caches) go into the work directory, never into the clone.
    cd "$work" &&
        MAXIONS_API_TOKEN=$token timeout --signal=INT --kill-after=10 150 \
            "$schemathesis" --config-file "$repo/scripts/schemathesis.toml" \
            run "$repo/schemas/openapi.json" \
            --url "$url" \
            --checks "$checks" \
            --max-examples "$max_examples" \
            --seed "$seed" \
            --workers "$workers" \
            --request-timeout 10 \
            --report junit,ndjson --report-dir "$work/report" \
            --no-color </dev/null
)
fuzz_status=$?
set -e

# --- stop -----------------------------------------------------------------------------------------
daemon_alive=1
kill -0 "$daemon_pid" 2>/dev/null || daemon_alive=0
daemon_status=0
if ((daemon_alive)); then
    kill -TERM "$daemon_pid"
    deadline=$((SECONDS + 60))
    while kill -0 "$daemon_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$daemon_pid" 2>/dev/null; then
        daemon_status=124
    else
        wait "$daemon_pid" || daemon_status=$?
    fi
else
    wait "$daemon_pid" || daemon_status=$?
fi
panics=$(grep -c 'panicked at' "$work/daemon.log" || true)
# What the fuzzer did with the token (the daemon logs each cancel, re-run and delete asked for
# through the API): none would mean it never got past the token, and tested only the 401s.
actions=$(grep -c 'through the API' "$work/daemon.log" || true)

echo
echo "== schemathesis against maxions daemon: summary =="
echo "  schemathesis: $("$schemathesis" --version | sed 's/.*version //'), checks: $checks"
echo "  examples per operation: $max_examples, seed: $seed, workers: $workers"
if ((fuzz_status == 0)); then
    echo "  result: no failures"
elif ((fuzz_status == 124)); then
    echo "  result: schemathesis did not finish within 150 s"
else
    echo "  result: FAILURES (exit $fuzz_status): see its output above"
fi
if ((daemon_alive == 0)); then
    echo "  daemon: DIED during the run (exit $daemon_status)"
elif ((daemon_status == 124)); then
    echo "  daemon: did not stop within 60 s of SIGTERM"
else
    echo "  daemon: stopped on SIGTERM, exit $daemon_status"
fi
echo "  daemon panics logged: $panics"
echo "  cancels, re-runs, deletes and submissions it made with the token: $actions"
echo "  time: $((SECONDS - started)) s"

if ((actions == 0)); then
    echo "  result: no request got past the token (is the Authorization header in scripts/schemathesis.toml?)"
fi
if ((fuzz_status != 0 || daemon_alive == 0 || daemon_status != 0 || panics != 0 || actions == 0)); then
    tail -n 30 "$work/daemon.log" >&2
    exit 1
fi
keep=0
