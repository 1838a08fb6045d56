#!/usr/bin/env bash
# What `maxions daemon` costs (issue 9 "Measure"), against baselines measured in the same run:
#
# 1. Drop → first command running, warm image. The blueprint's first step is `date +%s%N`, so its
#    output event carries the in-container clock at the moment the command ran; t0 is
#    `date +%s%N` just before an atomic `mv` of a prepared task file into tasks/. Baselines, with
#    the same t0 method: `docker run --rm --network none IMAGE date +%s%N` (raw CLI); the same
#    with the daemon's hardening (read-only rootfs, caps dropped but KILL, no-new-privileges,
#    pids and memory limits as the daemon's defaults, /tmp tmpfs, init, a /workspace volume, the
#    image's user); and that hardened container started detached, then `docker exec date`, which
#    is the daemon's own shape (a persistent container, then one exec per step). Subjects run in
#    interleaved rounds whose order rotates, after one warm-up round that is not counted; each
#    drop waits for its result and for its container to be gone. Targets: < 1500 ms, and within
#    300 ms of the raw `docker run`.
# 2. Idle: the daemon on an empty tasks folder; after a 2 s warm-up, VmRSS and CPU
#    (utime+stime) over IDLE_SECONDS. Reference: the peak RSS of a one-shot `maxions validate`
#    of one task file (same binary, allocator and config code, no runtime, watcher or engine
#    client), so the ratio says what being a daemon adds. Targets: < 20 MB, ~0 % CPU.
# 3. Queued: concurrency 1, a blueprint whose first step is `sleep 600`; 11 task files dropped
#    at once (until state.json holds 10 queued and 1 running), then 90 more (100 queued), then
#    900 more (1,000 queued), RSS and CPU at each, and RSS per queued task. Target: < 50 MB at
#    100 queued.
#
# Figures also go to target/bench/daemon.json ($MAXIONS_BENCH_DIR; see benches/report.py).
#
#   benches/daemon.sh            (N=10 IDLE_SECONDS=60 QUEUED_CPU_SECONDS=10 by default)
#   MAXIONS_BIN=path benches/daemon.sh   skips `cargo build --release`
#
# Needs Docker, the image (`maxions image build`) and python3. Prints figures and ratios, never
# a verdict: timings vary with the machine. Everything lives in a temp dir; the daemons are
# stopped with SIGTERM (shutdown_grace 2s) and the script checks that none of their containers
# (label maxions.owner=<boot id>/<daemon pid>) or volumes is left. MB means 10^6 bytes.
set -euo pipefail

N=${N:-10}
IDLE_SECONDS=${IDLE_SECONDS:-60}
QUEUED_CPU_SECONDS=${QUEUED_CPU_SECONDS:-10}
IMAGE=${IMAGE:-maxions/sandbox:latest}
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n ${MAXIONS_BIN:-} ]]; then
    bin=$MAXIONS_BIN
else
    (cd "$root" && cargo build --release --quiet)
    bin=${CARGO_TARGET_DIR:-$root/target}/release/maxions
fi
bin=$(realpath "$bin")
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 1; }
docker image inspect "$IMAGE" >/dev/null || { echo "needs $IMAGE: maxions image build" >&2; exit 1; }

work=$(mktemp -d /tmp/maxions-bench-daemon.XXXXXX)
figs=$work/figures.jsonl
figure() { python3 "$root/benches/common/figure.py" add "$figs" "$@"; }
median() { python3 "$root/benches/common/figure.py" median "$1"; }
bench_label="maxions.bench=daemon-$$"
daemon_pid=
cleanup() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        sleep 3
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    docker ps -aq --filter "label=$bench_label" | xargs -r docker rm -fv >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

boot=$(cat /proc/sys/kernel/random/boot_id)
clk_tck=$(getconf CLK_TCK)
user=$(docker image inspect "$IMAGE" --format '{{.Config.User}}')
user=${user%%:*}
now_ns() { date +%s%N; }

# ---- a project: maxions.yaml, blueprints, a bare repository --------------------------------
# A project dir with maxions.yaml (concurrency $1) and the two blueprints.
make_project() {
    local dir=$1 concurrency=$2
    mkdir -p "$dir/tasks" "$dir/blueprints" "$dir/prep"
    git init -q --bare "$dir/repo.git"
    cat >"$dir/maxions.yaml" <<YAML
concurrency: $concurrency
shutdown_grace: 2s
keep_runs: 1000
api:
  listen: 127.0.0.1:0
YAML
    cat >"$dir/blueprints/clock.yaml" <<YAML
name: clock
sandbox: { image: $IMAGE, network: none }
agent: { kind: command, command: ["true"] }
steps:
  - id: clock
    run: date +%s%N
YAML
    cat >"$dir/blueprints/slow.yaml" <<YAML
name: slow
sandbox: { image: $IMAGE, network: none }
agent: { kind: command, command: ["true"] }
steps:
  - id: wait
    run: sleep 600
YAML
}

# A task file $1 for blueprint $3 in project $2.
make_task() {
    cat >"$1" <<YAML
task: Benchmark drop $(basename "$1" .yaml).
repo: file://$2/repo.git
blueprint: $3
YAML
}

start_daemon() {
    (cd "$1" && exec "$bin" daemon >"$1/daemon.log" 2>&1) &
    daemon_pid=$!
    wait_for 30 "daemon start" grep -q 'maxions daemon started' "$1/daemon.log"
}

# SIGTERM, wait for the exit, then say whether the daemon left containers or volumes behind.
stop_daemon() {
    local rc=0
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || rc=$?
    local owner="label=maxions.owner=$boot/$daemon_pid"
    local left vols
    left=$(docker ps -aq --filter "$owner" | wc -l)
    vols=$(docker volume ls -q --filter "$owner" | wc -l)
    printf '  daemon stopped by SIGTERM: exit %d, containers left %d, volumes left %d\n' "$rc" "$left" "$vols"
    docker ps -aq --filter "$owner" | xargs -r docker rm -fv >/dev/null 2>&1 || true
    docker volume ls -q --filter "$owner" | xargs -r docker volume rm >/dev/null 2>&1 || true
    daemon_pid=
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 50 ms.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            echo "timed out after ${limit}s waiting for $what" >&2
            [[ -n $daemon_pid ]] && tail -20 "$project/daemon.log" >&2
            exit 1
        fi
        sleep 0.05
    done
}

no_run_containers() { [[ -z $(docker ps -aq --filter "label=maxions.owner=$boot/$daemon_pid") ]]; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
anon_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
# utime + stime in clock ticks (fields 14 and 15; the command name in field 2 has no spaces).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mb() { python3 -c "print(f'{$1 * 1024 / 1e6:.1f}')"; }

# CPU % of the daemon over $1 seconds.
cpu_pct() {
    local before after
    before=$(cpu_ticks "$daemon_pid")
    sleep "$1"
    after=$(cpu_ticks "$daemon_pid")
    python3 -c "print(f'{($after - $before) / $clk_tck / $1 * 100:.2f}')"
}

queue_is() { # queue_is QUEUED RUNNING
    python3 - "$project/.maxions/state.json" "$1" "$2" <<'PY' 2>/dev/null
import json, sys
s = json.load(open(sys.argv[1]))
sys.exit(0 if (len(s["queue"]), len(s["running"])) == (int(sys.argv[2]), int(sys.argv[3])) else 1)
PY
}

stats() { # stats NAME FILE [BASE_FILE]: one line of median/min/max ms (ratio, difference)
    python3 - "$@" <<'PY'
import statistics, sys
name, path = sys.argv[1], sys.argv[2]
xs = [float(l) for l in open(path) if l.strip()]
med = statistics.median(xs)
line = f"  {name:<34} median {med:7.0f} ms  min {min(xs):6.0f}  max {max(xs):6.0f}"
if len(sys.argv) > 3:
    base = statistics.median(float(l) for l in open(sys.argv[3]) if l.strip())
    line += f"  ratio {med / base:4.2f}x  diff {med - base:+5.0f} ms"
print(line)
PY
}

# ---- 1. drop → first command running ---------------------------------------------------------
echo "1. task file dropped -> first command running (warm image, N=$N, 1 warm-up round)"
project=$work/drop
make_project "$project" 1
make_task "$project/prep/check.yaml" "$project" clock
(cd "$project" && "$bin" validate -q maxions.yaml blueprints/clock.yaml blueprints/slow.yaml prep/check.yaml)
rm "$project/prep/check.yaml"
start_daemon "$project"
sleep 2

hardening=(--read-only --cap-drop ALL --cap-add KILL --security-opt no-new-privileges
    --pids-limit 1024 --memory 4g --memory-swap 4g
    --tmpfs /tmp:rw,nosuid,nodev,size=1g,mode=1777 --init -v /workspace
    --network none --user "$user" --label "$bench_label")
out=$work/out
mkdir -p "$out"

subject_daemon() {
    local round=$1 stem="d$1"
    make_task "$project/prep/$stem.yaml" "$project" clock
    local t0
    t0=$(now_ns)
    mv "$project/prep/$stem.yaml" "$project/tasks/$stem.yaml"
    wait_for 60 "$stem's result" test -f "$project/tasks/$stem.result.json"
    wait_for 30 "$stem's container to go" no_run_containers
    # The clock, and where the time went: the daemon's log says when the file was queued, the
    # run's log when the run started and when the sandbox was ready.
    python3 - "$project/tasks/$stem.result.json" "$project/daemon.log" "$t0" "$round" "$out" <<'PY'
import json, re, sys
from datetime import datetime
result_path, daemon_log, t0, round_, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
result = json.load(open(result_path))
if result["status"] != "succeeded":
    sys.exit(f"the run did not succeed: {result}")
def ns(ts):  # RFC 3339 with a fractional part and Z
    head, frac = ts.rstrip("Z").split(".")
    secs = datetime.fromisoformat(head + "+00:00").timestamp()
    return int(secs) * 10**9 + int(frac.ljust(9, "0")[:9])
events = [json.loads(l) for l in open(result["log"])]
first = lambda kind: next(e for e in events if e["type"] == kind)
clock = int(next(e for e in events if e["type"] == "output" and e["step"] == "clock")["text"])
task = result["task"]
queued = None
for line in open(daemon_log):
    if "queued" in line and f"task={task}" in line:
        queued = ns(re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0])
parts = {
    "total": clock - t0,
    "queued": queued - t0,
    "started": ns(first("run_started")["ts"]) - queued,
    "ready": ns(first("sandbox_ready")["ts"]) - ns(first("run_started")["ts"]),
    "exec": clock - ns(first("sandbox_ready")["ts"]),
}
if round_ > 0:
    for name, value in parts.items():
        with open(f"{out}/daemon.{name}", "a") as f:
            f.write(f"{value / 1e6:.1f}\n")
PY
}

record() { # record ROUND SUBJECT T0 CLOCK
    (($1 > 0)) && python3 -c "print(f'{($4 - $3) / 1e6:.1f}')" >>"$out/$2"
    return 0
}

subject_raw() {
    local t0 clock
    t0=$(now_ns)
    clock=$(docker run --rm --network none --label "$bench_label" "$IMAGE" date +%s%N)
    record "$1" raw "$t0" "$clock"
}

subject_hardened() {
    local t0 clock
    t0=$(now_ns)
    clock=$(docker run --rm "${hardening[@]}" "$IMAGE" date +%s%N)
    record "$1" hardened "$t0" "$clock"
}

subject_exec() {
    local t0 clock id
    t0=$(now_ns)
    id=$(docker run -d "${hardening[@]}" "$IMAGE" sleep infinity)
    clock=$(docker exec "$id" date +%s%N)
    record "$1" exec "$t0" "$clock"
    docker rm -fv "$id" >/dev/null
}

subjects=(daemon raw hardened exec)
for round in $(seq 0 "$N"); do
    for k in 0 1 2 3; do
        "subject_${subjects[$(((round + k) % 4))]}" "$round"
    done
done
stop_daemon

stats "raw docker run --rm" "$out/raw"
stats "hardened docker run --rm" "$out/hardened" "$out/raw"
stats "hardened docker run -d + exec" "$out/exec" "$out/raw"
stats "maxions daemon (target < 1500 ms)" "$out/daemon.total" "$out/raw"
echo "  daemon vs hardened run -d + exec: $(stats x "$out/daemon.total" "$out/exec" | grep -o 'ratio.*')"
figure id=start.daemon "what=run start: task file dropped into a running daemon -> first command in the container (median)" \
    unit=ms "value=$(median "$out/daemon.total")" "baseline=$(median "$out/raw")" \
    "baseline_what=raw \`docker run --rm\` of the same command" target=at_most:1500
figure id=start.daemon_vs_raw "what=run start: the daemon's time over raw \`docker run\` (median)" \
    unit=ms "value=$(median "$out/daemon.total")" "baseline=$(median "$out/raw")" \
    "baseline_what=raw \`docker run --rm\`" target=over_baseline_at_most:300
figure id=start.hardened_exec "what=run start: hardened \`docker run -d\` + \`docker exec\` (the daemon's shape, by hand)" \
    unit=ms "value=$(median "$out/exec")" "baseline=$(median "$out/raw")" "baseline_what=raw \`docker run --rm\`"
echo "  where the daemon's time goes (medians):"
stats "drop -> queued (notice, settle)" "$out/daemon.queued"
stats "queued -> run_started" "$out/daemon.started"
stats "run_started -> sandbox_ready" "$out/daemon.ready"
stats "sandbox_ready -> command ran" "$out/daemon.exec"

# ---- 2. idle --------------------------------------------------------------------------------
echo
echo "2. idle daemon, empty tasks folder (${IDLE_SECONDS}s window after a 2s warm-up)"
project=$work/idle
make_project "$project" 1
start_daemon "$project"
sleep 2
rss0=$(rss_kb "$daemon_pid")
cpu=$(cpu_pct "$IDLE_SECONDS")
rss1=$(rss_kb "$daemon_pid")
anon=$(anon_kb "$daemon_pid")
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$daemon_pid/status")
nthreads=$(threads "$daemon_pid")
stop_daemon
make_task "$project/prep/one.yaml" "$project" clock
ref=$(cd "$project" && /usr/bin/time -f %M "$bin" validate -q prep/one.yaml 2>&1 >/dev/null | tail -1)
printf '  RSS at start %s MB, at end %s MB (anonymous %s MB, peak %s MB, %s threads) (target < 20 MB)\n' \
    "$(mb "$rss0")" "$(mb "$rss1")" "$(mb "$anon")" "$(mb "$hwm")" "$nthreads"
printf '  CPU %s %% of one core over %ss (target ~0 %%)\n' "$cpu" "$IDLE_SECONDS"
printf '  reference: peak RSS of `maxions validate` on one task file %s MB; idle daemon / validate %sx\n' \
    "$(mb "$ref")" "$(python3 -c "print(f'{$rss1 / $ref:.2f}')")"
figure id=daemon.idle_rss "what=idle daemon RSS, empty tasks folder" unit=MB "value=$(mb "$rss1")" \
    "baseline=$(mb "$ref")" "baseline_what=peak RSS of a one-shot \`maxions validate\` of one task" target=at_most:20
figure id=daemon.idle_cpu "what=idle daemon CPU over ${IDLE_SECONDS} s" unit=% "value=$cpu" target=at_most:0.5

# ---- 3. queued ------------------------------------------------------------------------------
echo
echo "3. queued tasks, concurrency 1, the running one sleeps (CPU over ${QUEUED_CPU_SECONDS}s once queued)"
project=$work/queue
make_project "$project" 1
for i in $(seq -w 1 1001); do make_task "$project/prep/q$i.yaml" "$project" slow; done
start_daemon "$project"
sleep 2
rss_idle=$(rss_kb "$daemon_pid")
declare -A rss
from=1
for batch in 11 101 1001; do
    files=()
    for i in $(seq "$from" "$batch"); do files+=("$project/prep/q$(printf %04d "$i").yaml"); done
    from=$((batch + 1))
    t0=$(now_ns)
    mv "${files[@]}" "$project/tasks/"
    wait_for 600 "$((batch - 1)) queued" queue_is "$((batch - 1))" 1
    took=$(python3 -c "print(f'{($(now_ns) - $t0) / 1e9:.1f}')")
    sleep 2
    rss[$batch]=$(rss_kb "$daemon_pid")
    cpu=$(cpu_pct "$QUEUED_CPU_SECONDS")
    printf '  %4d queued + 1 running: RSS %s MB (anonymous %s MB), CPU %s %%, all queued %s s after the drop%s\n' \
        "$((batch - 1))" "$(mb "${rss[$batch]}")" "$(mb "$(anon_kb "$daemon_pid")")" "$cpu" "$took" \
        "$([[ $batch == 101 ]] && echo ' (target < 50 MB)')"
    target=()
    [[ $batch == 101 ]] && target=(target=at_most:50)
    figure "id=daemon.queued.$((batch - 1))" "what=daemon RSS with $((batch - 1)) tasks queued and 1 running" \
        unit=MB "value=$(mb "${rss[$batch]}")" "baseline=$(mb "$rss_idle")" "baseline_what=the same daemon idle" \
        "series=daemon RSS: queued tasks" "x=$((batch - 1))" "${target[@]}"
done
stop_daemon
printf '  idle before the drops %s MB; RSS per queued task (RSS1000 - RSS100) / 900 = %s kB\n' \
    "$(mb "$rss_idle")" "$(python3 -c "print(f'{(${rss[1001]} - ${rss[101]}) * 1024 / 900 / 1000:.2f}')")"

python3 "$root/benches/common/figure.py" write "$figs" daemon
