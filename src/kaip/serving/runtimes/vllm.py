"""`kaip-vllm`: starts the real `vllm serve` (OpenAI API) when vLLM is installed, e.g. on a GPU machine; refuses
with a clear message otherwise. KServe's arguments are mapped to vLLM's."""

from __future__ import annotations

import importlib.util
import os
import sys

from kaip.serving.runtimes.server import parse_args


def main(argv: list[str] | None = None) -> None:
    args = parse_args("Kaip vLLM launcher", argv=argv)
    if importlib.util.find_spec("vllm") is None:
        print("kaip-vllm: vLLM is not installed on this machine; install it (e.g. on a GPU machine) or serve the "
              "model with modelFormat huggingface (the kaip-huggingface runtime)", file=sys.stderr, flush=True)
        sys.exit(1)
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", f"--port={args.http_port}",
               f"--host={args.host}", f"--served-model-name={args.model_name}", f"--model={args.model_dir}"]
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
