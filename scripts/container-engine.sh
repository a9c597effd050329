#!/usr/bin/env bash
# Sourced by scripts/images.sh and the deploy test's runner: picks the container engine and
# exports ENGINE (docker or podman): Docker where its daemon answers, podman otherwise.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
  else
    echo "sparsegate: no container engine: install Docker or podman (apt-get install podman buildah runc)" >&2
    exit 2
  fi
fi
# Without systemd (PID 1 something else) podman's defaults (crun, systemd cgroups) fail at
# the first RUN: use the repository's settings (runc, cgroupfs) unless the caller set its own.
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] && [ ! -d /run/systemd/system ]; then
  export CONTAINERS_CONF=$root/deploy/podman/containers.conf
  command -v runc >/dev/null 2>&1 || {
    echo "sparsegate: podman without systemd needs runc (apt-get install runc)" >&2; exit 2; }
fi
export ENGINE
