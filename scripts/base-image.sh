#!/usr/bin/env bash
# Builds the images' base from Debian's packages when no container registry is reachable
# (python:3.11-slim-bookworm cannot be pulled): mmdebstrap a minimal bookworm with Python,
# venv, pip and CA certificates from the mirrors apt already uses, then import it.
# Cached: the tag is a hash of this script and the mirror lines, so it is rebuilt only when
# either changes. Prints the image's name on stdout.
#   usage: scripts/base-image.sh ENGINE   (docker or podman)
set -euo pipefail
engine=${1:?usage: base-image.sh docker|podman}
suite=bookworm
packages=python3,python3-venv,python3-pip,ca-certificates
# The mirror lines apt uses here (deb822 .sources or one-line .list files), so that a host
# behind its own mirror builds from it.
sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
          2>/dev/null | grep -v '^\s*#' || true)
key=$( { cat "$0"; echo "$suite $packages"; echo "$sources"; } | sha256sum | cut -c1-12)
image=localhost/sparsegate-base:$key
if "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "$image"; exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
  echo "sparsegate: no base image: python:3.11-slim-bookworm cannot be pulled and mmdebstrap is not installed;" \
       "install it (apt-get install mmdebstrap) or pass a local base image (SPARSEGATE_BASE_IMAGE=...)" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mirrors=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -s "$f" ] && mirrors+=("$f")
done
start=$(date +%s)
if ! mmdebstrap --quiet --variant=minbase --include="$packages" \
  --customize-hook='chroot "$1" sh -c "ln -sf python3 /usr/bin/python; rm -rf /var/lib/apt/lists/* /var/cache/apt/*"' \
  "$suite" "$work/rootfs.tar" "${mirrors[@]}" >"$work/log" 2>&1; then
  echo "sparsegate: no base image: python:3.11-slim-bookworm cannot be pulled and mmdebstrap" \
       "could not build one from Debian's mirrors ($(grep -m1 -iE 'E:|error' "$work/log" || tail -1 "$work/log"));" \
       "pass a local base image in SPARSEGATE_BASE_IMAGE" >&2
  exit 2
fi
"$engine" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' "$work/rootfs.tar" "$image" >/dev/null
echo "sparsegate: built $image from Debian's packages in $(( $(date +%s) - start )) s" >&2
echo "$image"
