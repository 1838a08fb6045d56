#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine, installing and starting Debian's if needed.
#
#   scripts/docker-engine.sh            # idempotent: returns at once when `docker info` works
#
# Installs the packages maxions' images need too (docker.io, debootstrap). dockerd logs to
# $MAXIONS_DOCKERD_LOG (default /var/log/maxions-dockerd.log). Exits non-zero, saying why, when the
# engine cannot be started.
set -euo pipefail

log=${MAXIONS_DOCKERD_LOG:-/var/log/maxions-dockerd.log}

say() { printf 'docker-engine: %s\n' "$*" >&2; }

need_packages=()
command -v dockerd >/dev/null 2>&1 || need_packages+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_packages+=(debootstrap)
if ((${#need_packages[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        say "missing ${need_packages[*]}; install them (apt-get install ${need_packages[*]}) or run this as root"
        exit 1
    fi
    say "installing ${need_packages[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    say "no Docker engine answers and only root can start one; start dockerd, or set DOCKER_HOST"
    exit 1
fi
if [[ -n ${DOCKER_HOST:-} ]]; then
    say "DOCKER_HOST=$DOCKER_HOST does not answer; unset it to use a local engine"
    exit 1
fi

say "starting dockerd (log: $log)"
mkdir -p "$(dirname "$log")"
# setsid: the engine outlives this script and is not killed with the caller's process group.
setsid dockerd >"$log" 2>&1 </dev/null &
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then
        say "engine ready: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
        exit 0
    fi
    if ! kill -0 $! 2>/dev/null; then
        say "dockerd exited; the end of $log:"
        tail -n 20 "$log" >&2
        exit 1
    fi
    sleep 0.5
done
say "dockerd did not answer within 60 s; the end of $log:"
tail -n 20 "$log" >&2
exit 1
