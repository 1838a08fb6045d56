#!/usr/bin/env bash
# Six demo runs (the shipped demo's blueprint and scripted agent: checkout, agent, a check that
# fails once and a fix round, commit, push) through one `maxions daemon`, placed on one engine
# (capacity 6) against spread over two (capacity 3 each): this machine's engine and a second,
# real dockerd in its own network namespace, reached over TCP with TLS client certificates
# made here. Both engines share this machine's 2 cores, so spreading cannot add CPU: the
# figure says what a second engine costs or gains when the hardware is the same (on two
# machines, each engine brings its own cores). Wall time from the six task files appearing to
# the last result; runs per minute, against one engine in the same session.
#
#   benches/engines.sh                 (ROUNDS=2 by default)
#   MAXIONS_BIN=path benches/engines.sh  skips `cargo build --release`
#
# Needs root, Docker, unshare, openssl, python3 and the sandbox image. Figures also go to
# target/bench/engines.json.
set -euo pipefail

ROUNDS=${ROUNDS:-2}
RUNS=6
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

work=$(mktemp -d /tmp/mxb.XXXXXX)
engine=$work/e
mkdir -p "$engine/certs" "$engine/client"
daemon_pid=
dockerd_pid=
cleanup() {
    [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    if [[ -n $dockerd_pid ]]; then
        docker -H "unix://$engine/d.sock" ps -aq | xargs -r docker -H "unix://$engine/d.sock" rm -fv >/dev/null 2>&1
        kill "$dockerd_pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    pkill -9 -f "$engine" 2>/dev/null || true
    grep " $engine" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
figs=$work/figures.jsonl
figure() { python3 "$root/benches/common/figure.py" add "$figs" "$@"; }
now_ns() { date +%s%N; }

# ---- the second engine, over TCP with TLS ------------------------------------------------------
(
    cd "$engine/certs"
    key='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'
    openssl req -x509 $key -keyout ca-key.pem -out ca.pem -days 1 -subj /CN=bench-ca 2>/dev/null
    openssl req $key -keyout server-key.pem -out server.csr -subj /CN=127.0.0.1 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 -extfile server.ext -out server-cert.pem 2>/dev/null
    openssl req $key -keyout ../client/key.pem -out client.csr -subj /CN=bench-client 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 -extfile client.ext -out ../client/cert.pem 2>/dev/null
    cp ca.pem ../client/ca.pem
)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The port is bound here, on this machine's loopback, and handed to dockerd (in its own
# network namespace) as fd 3 by socket activation.
python3 - "$engine" "$port" >"$engine/dockerd.log" 2>&1 <<'PY' &
import os, socket, sys
d, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(128)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
c = d + "/certs"
script = (f"ip link set lo up && export LISTEN_FDS=1 LISTEN_PID=$$ && exec dockerd --data-root {d}/data "
          f"--exec-root {d}/x --pidfile {d}/d.pid -H unix://{d}/d.sock -H fd:// --bridge none --iptables=false "
          f"--ip-masq=false --userland-proxy=false --tlsverify --tlscacert {c}/ca.pem "
          f"--tlscert {c}/server-cert.pem --tlskey {c}/server-key.pem")
os.execvp("unshare", ["unshare", "--net", "sh", "-c", script])
PY
dockerd_pid=$!
for _ in $(seq 600); do docker -H "unix://$engine/d.sock" info >/dev/null 2>&1 && break; sleep 0.1; done
docker -H "unix://$engine/d.sock" info >/dev/null || { cat "$engine/dockerd.log" >&2; exit 1; }
echo "second engine: tcp://127.0.0.1:$port (TLS); loading $IMAGE onto it"
docker save "$IMAGE" | docker -H "unix://$engine/d.sock" load -q >/dev/null

# ---- the demo, six times -----------------------------------------------------------------------
"$bin" -q demo --dir "$work/seed" >"$work/seed.out" 2>&1 || { cat "$work/seed.out" >&2; exit 1; }

# project DIR ENGINES_YAML: the demo's blueprint and origin, a daemon config, no tasks yet.
project() {
    local dir=$1
    mkdir -p "$dir/tasks"
    cp -r "$work/seed/blueprints" "$work/seed/origin" "$dir/" 2>/dev/null || cp -r "$work/seed/origin" "$dir/"
    printf 'api:\n  enabled: false\nlocal_repos: [origin]\n%s' "$2" >"$dir/maxions.yaml"
}
demo_task=$(ls "$work/seed/tasks/"*.yaml | head -1)

round() { # round DIR: six tasks into a fresh daemon; prints the wall time in seconds
    local dir=$1
    "$bin" -q daemon --config "$dir/maxions.yaml" >"$dir/daemon.out" 2>&1 &
    daemon_pid=$!
    sleep 1
    local t0
    t0=$(now_ns)
    for i in $(seq 1 $RUNS); do
        sed "s#$work/seed#$dir#g" "$demo_task" >"$dir/tasks/demo$i.yaml"
    done
    for _ in $(seq 3000); do
        local done=0
        for i in $(seq 1 $RUNS); do
            [[ -f $dir/tasks/demo$i.result.json ]] && grep -q '"status": *"succeeded"' "$dir/tasks/demo$i.result.json" && done=$((done + 1))
        done
        ((done == RUNS)) && break
        if grep -qE '"status": *"(failed|interrupted|invalid)"' "$dir"/tasks/*.result.json 2>/dev/null; then
            echo "a run did not succeed:" >&2; cat "$dir"/tasks/*.result.json "$dir/daemon.out" >&2; exit 1
        fi
        sleep 0.1
    done
    python3 -c "print(($(now_ns) - $t0) / 1e9)"
    kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
}

one="engines:
  - { name: local, capacity: $RUNS }
"
two="engines:
  - { name: local, capacity: $((RUNS / 2)) }
  - { name: second, host: \"tcp://127.0.0.1:$port\", tls: $engine/client, capacity: $((RUNS / 2)) }
"
echo "$RUNS demo runs through one daemon ($(nproc) cores), best of $ROUNDS"
best_one=999999
best_two=999999
for r in $(seq 1 "$ROUNDS"); do
    project "$work/one-$r" "$one"
    w=$(round "$work/one-$r")
    printf '  one engine:  %.1f s\n' "$w"
    best_one=$(python3 -c "print(min($best_one, $w))")
    project "$work/two-$r" "$two"
    w=$(round "$work/two-$r")
    printf '  two engines: %.1f s\n' "$w"
    best_two=$(python3 -c "print(min($best_two, $w))")
    on_second=$(grep -l '"engine":"second"' "$work/two-$r"/tasks/*.runs/*.jsonl | wc -l)
    echo "    ($on_second of $RUNS ran on the second engine)"
done
# ---- what a step costs on each engine -----------------------------------------------------------
# 20 `true` steps in one `maxions run`: on this machine's engine, on the second over its Unix
# socket, and on the second over TCP with TLS (which tells the TLS connection's cost apart
# from the engine's own).
steps=$work/steps
mkdir -p "$steps/blueprints" "$steps/tasks"
cp -r "$work/seed/origin" "$steps/"
{
    printf 'name: steps
sandbox:
  network: none
steps:
  - id: checkout
    checkout: {}
'
    for i in $(seq 1 20); do printf '  - id: s%d
    run: "true"
' "$i"; done
} >"$steps/blueprints/steps.yaml"
printf 'task: steps
repo: file://%s/origin/demo.git
blueprint: steps
base: main
' "$steps" >"$steps/tasks/steps.yaml"
step_ms() { # step_ms ENV...: median duration of the 20 steps of one run
    rm -rf "$steps/tasks/steps.runs" "$steps/tasks/steps.result.json"
    (cd "$steps" && env "$@" "$bin" -q run tasks/steps.yaml >"$steps/run.out" 2>&1) ||
        { cat "$steps/run.out" >&2; exit 1; }
    python3 - "$steps"/tasks/steps.runs/*.jsonl <<'PY'
import json, statistics, sys
events = [json.loads(l) for l in open(sys.argv[1])]
print(statistics.median(e["duration_ms"] for e in events
                        if e["type"] == "step_finished" and e["step"].startswith("s")))
PY
}
best() { python3 -c "import sys; print(min(float(x) for x in sys.argv[1:]))" "$@"; }
local_runs=() unix_runs=() tls_runs=()
for r in $(seq 1 3); do
    local_runs+=("$(step_ms DOCKER_HOST=)")
    unix_runs+=("$(step_ms "DOCKER_HOST=unix://$engine/d.sock")")
    tls_runs+=("$(step_ms "DOCKER_HOST=tcp://127.0.0.1:$port" DOCKER_TLS_VERIFY=1 "DOCKER_CERT_PATH=$engine/client")")
done
step_local=$(best "${local_runs[@]}")
step_unix=$(best "${unix_runs[@]}")
step_tls=$(best "${tls_runs[@]}")
printf '  a `true` step (median of 20, best of 3): this engine %.1f ms, the second over its socket %.1f ms, over TLS %.1f ms
' \
    "$step_local" "$step_unix" "$step_tls"
figure "id=engines.step.unix" "what=a \`true\` step on the second engine, over its Unix socket" \
    "unit=ms" "value=$step_unix" "baseline=$step_local" "baseline_what=the same step on this machine's engine"
figure "id=engines.step.tls" "what=a \`true\` step on the second engine, over TCP with TLS" \
    "unit=ms" "value=$step_tls" "baseline=$step_unix" "baseline_what=the same engine over its Unix socket"

rate_one=$(python3 -c "print($RUNS * 60 / $best_one)")
rate_two=$(python3 -c "print($RUNS * 60 / $best_two)")
printf '  runs/min: one engine %.1f, two engines %.1f (%.2fx)\n' "$rate_one" "$rate_two" \
    "$(python3 -c "print($rate_two / $rate_one)")"
figure "id=engines.one" "what=$RUNS demo runs through a daemon, one engine (capacity $RUNS)" \
    "unit=runs/min" "value=$rate_one" "baseline=$rate_one" "baseline_what=one engine"
figure "id=engines.two" "what=$RUNS demo runs through a daemon, two engines on one machine (capacity $((RUNS / 2)) each, the second over TLS)" \
    "unit=runs/min" "value=$rate_two" "baseline=$rate_one" "baseline_what=one engine, same session"
python3 "$root/benches/common/figure.py" write "$figs" engines
