#!/usr/bin/env bash
# Debian packages the tests drive for real: Prometheus (dashboard queries), Chromium (the
# /dashboard page), docker-compose (validates docker-compose.yml, and runs the stack), the
# PostgreSQL server (the shared registry back end; the tests start their own instance), the
# Redis server (tenant limits shared across gateway processes; started by the tests too), and
# podman with buildah, runc and mmdebstrap (images built and run where no Docker engine is:
# tests/test_deploy_stack.py).
# Installs what is missing when it can (root or sudo); otherwise says what to install.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ! { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }; then
  # podman's own Recommends (networking, DNS between containers, overlay) named explicitly:
  # this installs with --no-install-recommends.
  for p in podman buildah runc mmdebstrap netavark aardvark-dns slirp4netns uidmap \
           fuse-overlayfs containernetworking-plugins iptables; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
fi
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "sparsegate: installing ${need[*]} (Debian packages the tests use)"
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
       $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
  echo "sparsegate: could not install ${need[*]}; install them (apt-get install ${need[*]})" >&2
  exit 1
fi
