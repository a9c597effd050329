#!/usr/bin/env bash
# `make images`: builds the images (compress, engine-cpu, gateway, prometheus) with Docker
# where its daemon runs, podman otherwise. Settings, all optional:
#   SPARSEGATE_IMAGES      targets to build (default: "gateway prometheus compress engine-cpu")
#   SPARSEGATE_BASE_IMAGE  the base image; default python:3.11-slim-bookworm where it is
#                          present or can be pulled, else one built from Debian's packages
#                          (scripts/base-image.sh, cached)
#   SPARSEGATE_EXTRA_CA    extra CA certificates (*.crt files or folders of them) for pip in
#                          the build, e.g. a TLS-intercepting proxy's; default: the host's
#                          /usr/local/share/ca-certificates
#   SPARSEGATE_WHEELS      a local wheel folder pip looks in first; default: pip's own
#                          find-links setting here. When it holds torch, PyTorch's index is
#                          not asked.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=container-engine.sh
source scripts/container-engine.sh
targets=${SPARSEGATE_IMAGES:-gateway prometheus compress engine-cpu}
step() { printf 'sparsegate images: %-34s %4d s\n' "$1" "$(( $(date +%s) - $2 ))"; }

t=$(date +%s)
base=${SPARSEGATE_BASE_IMAGE:-}
if [ -z "$base" ]; then
  base=python:3.11-slim-bookworm
  if ! $ENGINE image inspect "$base" >/dev/null 2>&1 \
     && ! timeout 120 $ENGINE pull -q "docker.io/library/$base" >/dev/null 2>&1; then
    echo "sparsegate images: $base cannot be pulled; building a base from Debian's packages" >&2
    base=$(scripts/base-image.sh "$ENGINE") || exit $?
  fi
elif ! $ENGINE image inspect "$base" >/dev/null 2>&1 && ! $ENGINE pull -q "$base" >/dev/null 2>&1; then
  echo "sparsegate: the base image $base is neither here nor pullable; build one with" \
       "scripts/base-image.sh $ENGINE or name a local one in SPARSEGATE_BASE_IMAGE" >&2
  exit 2
fi
step "base image $base" "$t"

# The optional inputs go into one small image, bind-mounted only while pip runs: no host
# path is baked into the Dockerfile, and nothing of them stays in the images.
t=$(date +%s)
inputs=$(mktemp -d)
trap 'rm -rf "$inputs"' EXIT
mkdir -p "$inputs/ca" "$inputs/wheels"
ca=${SPARSEGATE_EXTRA_CA-/usr/local/share/ca-certificates}
for c in $ca; do
  if [ -d "$c" ]; then find "$c" -name '*.crt' -exec cp {} "$inputs/ca/" \; ; elif [ -f "$c" ]; then cp "$c" "$inputs/ca/"; fi
done
wheels=${SPARSEGATE_WHEELS-$(pip config get global.find-links 2>/dev/null || true)}
for w in $wheels; do [ -d "$w" ] && cp -r "$w/." "$inputs/wheels/"; done
build_args=(--build-arg "BASE=$base")
if [ -n "$(find "$inputs" -mindepth 2 -print -quit)" ]; then  # any file at all
  printf 'FROM scratch\nCOPY . /\n' > "$inputs/Containerfile"
  $ENGINE build -q -f "$inputs/Containerfile" -t sparsegate-build-inputs "$inputs" >/dev/null
  build_args+=(--build-arg INPUTS=sparsegate-build-inputs)
  echo "sparsegate images: build inputs: $(ls "$inputs/ca" | wc -l) CA certificate(s)," \
       "$(ls "$inputs/wheels" | wc -l) wheel(s)"
fi
if compgen -G "$inputs/wheels/torch-*+cpu-*.whl" >/dev/null; then
  build_args+=(--build-arg TORCH_INDEX=)
fi
step "build inputs" "$t"

format=()
# podman's default OCI format drops HEALTHCHECK silently; Docker needs BuildKit for
# `RUN --mount` (the default since Docker 23).
[ "$ENGINE" = podman ] && format=(--format docker)
export DOCKER_BUILDKIT=1
for target in $targets; do
  t=$(date +%s)
  log=$(mktemp)
  # The label lets a cleanup remove our old images, and only ours.
  if ! $ENGINE build "${format[@]}" "${build_args[@]}" --target "$target" \
       --label "io.sparsegate.image=$target" -t "sparsegate-$target:latest" . >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "sparsegate images: building $target failed (last lines above)" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  size=$($ENGINE image inspect -f '{{.Size}}' "sparsegate-$target:latest")
  step "sparsegate-$target ($(( size / 1000000 )) MB)" "$t"
done
