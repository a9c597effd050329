#!/usr/bin/env bash
# docker-compose against podman, where no Docker engine runs:
#   eval "$(scripts/podman-service.sh start)"   # exports DOCKER_HOST
#   docker-compose --profile cpu up -d
#   scripts/podman-service.sh stop
# `start` runs, in one process group of their own, podman's Docker-compatible API service on
# a socket under STATE (default .podman/) and a health-check runner: podman runs
# HEALTHCHECKs only through systemd timers, so without systemd a container would stay
# "starting" for ever and `depends_on: {condition: service_healthy}` would never be met.
# `stop` ends that process group (by the recorded id) and nothing else.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state=${STATE:-$root/.podman}
ENGINE=podman
# shellcheck source=container-engine.sh
source "$root/scripts/container-engine.sh"
sock=$state/podman.sock
pgid_file=$state/service.pgid
interval=${SPARSEGATE_HEALTH_INTERVAL_S:-5}

case ${1:-} in
  start)
    mkdir -p "$state"
    if [ -f "$pgid_file" ] && kill -0 -- "-$(cat "$pgid_file")" 2>/dev/null; then
      echo "export DOCKER_HOST=unix://$sock${CONTAINERS_CONF:+ CONTAINERS_CONF=$CONTAINERS_CONF}"
      exit 0
    fi
    rm -f "$sock"
    setsid bash -c '
      podman system service --time=0 "unix://$0" &
      while sleep "$1"; do
        for c in $(podman ps -q --filter status=running); do
          podman healthcheck run "$c" >/dev/null 2>&1 || true
        done
      done' "$sock" "$interval" >"$state/service.log" 2>&1 < /dev/null &
    echo $! > "$pgid_file"   # setsid's child leads its own session: its pid is the group id
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { echo "podman service did not start: $(tail -1 "$state/service.log")" >&2; exit 1; }
    echo "export DOCKER_HOST=unix://$sock${CONTAINERS_CONF:+ CONTAINERS_CONF=$CONTAINERS_CONF}"
    ;;
  stop)
    if [ -f "$pgid_file" ]; then
      kill -- "-$(cat "$pgid_file")" 2>/dev/null || true
      rm -f "$pgid_file" "$sock"
    fi
    ;;
  *) echo "usage: scripts/podman-service.sh start|stop" >&2; exit 2 ;;
esac
