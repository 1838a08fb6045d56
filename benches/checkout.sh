#!/usr/bin/env bash
# Whole-run cost of getting a ~50 MB repository into the sandbox, first run and second run, for
# maxions' `checkout` (host-side mirror, bundle through the engine API) beside a blueprint that
# clones inside the sandbox, measured in the same session on the same repository.
#
#   benches/checkout.sh [MAXIONS_BINARY] [--clone-inside]
#
# Prints one line per run: `<mode> run <n>: <seconds> s`. Needs Docker and the sandbox image.
set -euo pipefail
bin=${1:-target/release/maxions}
mode=${2:-}
work=$(mktemp -d /tmp/maxions-bench-checkout.XXXXXX)
trap 'rm -rf "$work"' EXIT

repo="$work/origin/big.git"
git init -q --bare "$repo"
src="$work/src"
git init -q -b main "$src"
cd "$src"
# 300 commits, 50 MB of incompressible data in all.
for i in $(seq 1 300); do
    head -c 174763 /dev/urandom > "file-$((i % 60)).bin"
    git add -A
    git -c user.name=b -c user.email=b@b commit -q -m "commit $i"
done
git push -q "$repo" main
cd - >/dev/null

mkdir -p "$work/tasks" "$work/blueprints"
if [[ $mode == --clone-inside ]]; then
    setup='  - id: setup
    run: git clone -q {{ repo.clone_url }} /workspace/repo && cd /workspace/repo && git checkout -q -B {{ branch }}'
else
    setup='  - id: checkout
    checkout: {}'
fi
cat > "$work/blueprints/bench.yaml" <<YAML
name: bench
sandbox: { image: maxions/sandbox:latest, network: none, memory: 2g, timeout: 10m }
steps:
$setup
  - id: look
    run: cd /workspace/repo && git log --oneline | wc -l
YAML
cat > "$work/tasks/big.yaml" <<YAML
task: Look at the repository.
repo: file://$repo
blueprint: bench
base: main
YAML
label=${mode:-checkout}
for n in 1 2; do
    start=$(date +%s.%N)
    "$bin" run -q "$work/tasks/big.yaml" >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }
    end=$(date +%s.%N)
    printf '%s run %d: %.2f s\n' "${label#--}" "$n" "$(echo "$end - $start" | bc)"
done
