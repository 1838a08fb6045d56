#!/usr/bin/env bash
# Whole runs of the shipped demo (`maxions demo`: a local repository, a scripted agent, a check
# that fails once and a fix round, commit, push back; no network):
#
# 1. One run, split into where its time goes, from its own log (median of ROUNDS runs):
#    process start -> run_started (t0 is `date +%s%N` just before the process starts),
#    sandbox create (run_started -> sandbox_ready), checkout, the steps in between (agent,
#    checks, fix round, describe), bundle out + commit (`commit`), push, pull request, and
#    destroy (the last step's end -> run_finished). Baseline for the sandbox create: the same
#    hardened container made with `docker run -d` in the same session.
# 2. Throughput of 1, 3 and 6 demo runs at once on this machine (each in its own directory),
#    in runs per minute, against 1 at a time. On 2 cores the gain is bounded by the CPU: the
#    figure says how much of a run is waiting (for the engine, for git) rather than computing.
#
#   benches/runs.sh                  (ROUNDS=5 by default)
#   MAXIONS_BIN=path benches/runs.sh   skips `cargo build --release`
#
# Needs Docker, the sandbox image and python3. Figures also go to target/bench/runs.json.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
IMAGE=${IMAGE:-maxions/sandbox:latest}
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n ${MAXIONS_BIN:-} ]]; then
    bin=$MAXIONS_BIN
else
    (cd "$root" && cargo build --release --quiet)
    bin=${CARGO_TARGET_DIR:-$root/target}/release/maxions
fi
bin=$(realpath "$bin")
docker image inspect "$IMAGE" >/dev/null || { echo "needs $IMAGE: maxions image build" >&2; exit 1; }

work=$(mktemp -d /tmp/maxions-bench-runs.XXXXXX)
label="maxions.bench=runs-$$"
trap 'docker ps -aq --filter "label=$label" | xargs -r docker rm -fv >/dev/null 2>&1; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
figs=$work/figures.jsonl
figure() { python3 "$root/benches/common/figure.py" add "$figs" "$@"; }
now_ns() { date +%s%N; }

demo() { # demo DIR: one quiet demo run; fails loudly when it does not succeed
    if ! "$bin" -q demo --dir "$1" >"$1.out" 2>&1; then
        echo "maxions demo failed:" >&2
        cat "$1.out" >&2
        exit 1
    fi
}

# ---- 1. one run, phase by phase ----------------------------------------------------------------
echo "1. one demo run, where the time goes (median of $ROUNDS, after one warm-up run)"
user=$(docker image inspect "$IMAGE" --format '{{.Config.User}}')
user=${user%%:*}
hardening=(--read-only --cap-drop ALL --cap-add KILL --security-opt no-new-privileges
    --pids-limit 1024 --memory 4g --memory-swap 4g
    --tmpfs /tmp:rw,nosuid,nodev,size=1g,mode=1777 --init -v /workspace
    --network none --user "$user" --label "$label")
demo "$work/warm"
: >"$work/phases.jsonl"
: >"$work/raw_create"
for round in $(seq 1 "$ROUNDS"); do
    dir=$work/one-$round
    t0=$(now_ns)
    demo "$dir"
    t1=$(now_ns)
    python3 - "$dir" "$t0" "$t1" >>"$work/phases.jsonl" <<'PY'
import glob, json, sys
from datetime import datetime
dir_, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def ns(ts):
    head, frac = ts.rstrip("Z").split(".")
    return int(datetime.fromisoformat(head + "+00:00").timestamp()) * 10**9 + int(frac.ljust(9, "0")[:9])
log = glob.glob(f"{dir_}/tasks/*.runs/*.jsonl")[0]
events = [json.loads(l) for l in open(log)]
at = lambda kind: ns(next(e for e in events if e["type"] == kind)["ts"])
steps = {e["step"]: e["duration_ms"] for e in events if e["type"] == "step_finished"}
last_step = max(ns(e["ts"]) for e in events if e["type"] == "step_finished")
middle = sum(v for k, v in steps.items() if k not in ("checkout", "commit", "push", "pr"))
print(json.dumps({
    "total": (t1 - t0) / 1e6,
    "startup": (at("run_started") - t0) / 1e6,
    "create": (at("sandbox_ready") - at("run_started")) / 1e6,
    "checkout": steps.get("checkout", 0),
    "steps": middle,
    "commit": steps.get("commit", 0),
    "push": steps.get("push", 0),
    "pr": steps.get("pr", 0),
    "destroy": (at("run_finished") - last_step) / 1e6,
}))
PY
    s=$(now_ns)
    id=$(docker run -d "${hardening[@]}" "$IMAGE" sleep infinity)
    docker exec "$id" true
    python3 -c "print(($(now_ns) - $s) / 1e6)" >>"$work/raw_create"
    docker rm -fv "$id" >/dev/null
done
python3 - "$work/phases.jsonl" "$work/raw_create" "$figs" "$root" <<'PY'
import json, statistics, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
raw = statistics.median(float(l) for l in open(sys.argv[2]))
figs, root = sys.argv[3], sys.argv[4]
names = {
    "total": "the whole process, start to exit",
    "startup": "process start -> run_started",
    "create": "sandbox create (run_started -> sandbox_ready)",
    "checkout": "checkout (host mirror, bundle in)",
    "steps": "agent, checks, fix round, describe",
    "commit": "bundle out + commit",
    "push": "push",
    "pr": "pull request (none: no forge in the demo)",
    "destroy": "destroy (last step -> run_finished)",
}
for key, what in names.items():
    value = statistics.median(r[key] for r in rows)
    print(f"  {what:<44} {value:8.0f} ms")
    args = [f"id=demo.{key}", f"what=demo run: {what} (median)", "unit=ms", f"value={value}"]
    if key == "create":
        args += [f"baseline={raw}", "baseline_what=hardened `docker run -d` + first `docker exec`"]
    subprocess.run(["python3", f"{root}/benches/common/figure.py", "add", figs, *args], check=True)
print(f"  baseline: hardened docker run -d + first exec {raw:8.0f} ms")
PY

# ---- 2. concurrent runs ------------------------------------------------------------------------
echo
echo "2. demo runs at once ($(nproc) cores)"
declare -A rate
for k in 1 3 6; do
    t0=$(now_ns)
    pids=()
    for i in $(seq 1 "$k"); do
        demo "$work/c$k-$i" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    wall=$(python3 -c "print(($(now_ns) - $t0) / 1e9)")
    rate[$k]=$(python3 -c "print($k * 60 / $wall)")
    printf '  %d at once: %.1f s, %.1f runs/min\n' "$k" "$wall" "${rate[$k]}"
done
for k in 1 3 6; do
    figure "id=throughput.$k" "what=demo runs per minute, $k at once" "unit=runs/min" \
        "value=${rate[$k]}" "baseline=${rate[1]}" "baseline_what=1 at a time" \
        "series=demo throughput: runs at once" "x=$k"
done
python3 "$root/benches/common/figure.py" write "$figs" runs
