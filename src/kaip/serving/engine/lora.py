"""LoRA adapters for the paged runner: multi-LoRA serving after vLLM's `--enable-lora`.

An adapter is read as PEFT saves it (`adapter_config.json` + `adapter_model.safetensors`, or `.bin`) and laid out
for the runner's fused projections: per layer, one (A, B) pair for each of `qkv`, `o`, `gate_up` and `down`, where A
stacks the targeted modules' A matrices along the rank and B is block-diagonal over the fused output columns (zero
for a module the adapter does not target), with the module's scale folded in. One shrink and one expand matmul then
give the delta of the whole fused projection for an adapter's rows: `delta = (x @ A.T) @ B.T`.

What the runner cannot apply as such is refused when the adapter loads, with the reason: DoRA, LoRA biases,
`modules_to_save`, per-module alphas, targets other than a Llama layer's seven linear projections, a rank above
`max_lora_rank`, shapes of another base model."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The runner's fused projections: group -> the PEFT module names it stacks, in output-column order.
GROUPS: dict[str, tuple[str, ...]] = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
                                      "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",)}
MODULES = tuple(m for group in GROUPS.values() for m in group)
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
# adapter_config.json fields whose non-default values change the math beyond x @ A.T @ B.T * scale.
_REFUSED = {"use_dora": "DoRA (use_dora)", "lora_bias": "LoRA biases (lora_bias)", "fan_in_fan_out": "fan_in_fan_out",
            "modules_to_save": "modules_to_save", "alpha_pattern": "per-module alphas (alpha_pattern)",
            "layer_replication": "layer_replication", "trainable_token_indices": "trainable_token_indices",
            "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
            "target_parameters": "target_parameters", "use_qalora": "QA-LoRA (use_qalora)",
            "use_bdlora": "BD-LoRA (use_bdlora)", "arrow_config": "Arrow routing (arrow_config)",
            "kasa_config": "KaSA (kasa_config)", "monteclora_config": "MonteCLoRA (monteclora_config)"}


class LoRAError(ValueError):
    """An adapter that cannot be served; the message says which and why."""


@dataclass(frozen=True)
class LoRAWeights:
    a: torch.Tensor  # [sum of ranks, in_features]
    b: torch.Tensor  # [fused out_features, sum of ranks], block-diagonal, scale folded in


@dataclass
class LoRAAdapter:
    name: str
    path: str
    rank: int  # the largest rank of its modules
    targets: tuple[str, ...]
    layers: list[dict[str, LoRAWeights]]  # per layer: group -> weights (only the groups it targets)


@dataclass(frozen=True)
class LlamaLayout:
    """Shapes of the base model's fused projections, which an adapter's matrices must fit."""

    num_layers: int
    hidden: int
    q: int  # heads * head_dim
    kv: int  # kv heads * head_dim
    intermediate: int

    def group(self, name: str) -> tuple[int, tuple[int, ...]]:
        """(in_features, out_features of each stacked module) of a fused group."""
        return {"qkv": (self.hidden, (self.q, self.kv, self.kv)), "o": (self.q, (self.hidden,)),
                "gate_up": (self.hidden, (self.intermediate, self.intermediate)),
                "down": (self.intermediate, (self.hidden,))}[name]


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors) of a PEFT adapter folder."""
    folder = Path(path)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise LoRAError(f"{folder} is not a PEFT adapter: it has no adapter_config.json")
    config = json.loads(config_file.read_text())
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(folder / "adapter_model.safetensors"))
    elif (folder / "adapter_model.bin").is_file():
        tensors = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise LoRAError(f"{folder} has no adapter_model.safetensors (or adapter_model.bin)")
    return config, tensors


def load_adapter(name: str, path: str | Path, layout: LlamaLayout, *, max_rank: int,
                 dtype: torch.dtype = torch.float32) -> LoRAAdapter:
    """Read and check a PEFT LoRA adapter and fuse it for the runner; LoRAError says why one cannot be served."""
    try:
        config, tensors = read_adapter(path)
    except LoRAError as err:
        raise LoRAError(f"LoRA adapter {name!r}: {err}") from err
    except (OSError, ValueError, RuntimeError) as err:
        raise LoRAError(f"LoRA adapter {name!r}: cannot read {path}: {err}") from err

    def refuse(why: str) -> LoRAError:
        return LoRAError(f"LoRA adapter {name!r} ({path}): {why}")

    if config.get("peft_type", "LORA") != "LORA":
        raise refuse(f"peft_type {config.get('peft_type')!r} is not LORA")
    if config.get("bias", "none") != "none":
        raise refuse(f"bias={config['bias']!r} is not supported (only 'none')")
    for key, what in _REFUSED.items():
        if config.get(key):
            raise refuse(f"{what} is not supported")
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    rslora = bool(config.get("use_rslora"))

    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        if m is None or m.group(2) not in MODULES:
            raise refuse(f"it targets {_module_of(key)}, but Kaip's runner applies LoRA only to a Llama layer's "
                         f"{', '.join(MODULES)}")
        layer = int(m.group(1))
        if layer >= layout.num_layers:
            raise refuse(f"it has weights for layer {layer}; the base model has {layout.num_layers} layers")
        found.setdefault((layer, m.group(2)), {})[m.group(3)] = tensor
    if not found:
        raise refuse("it holds no LoRA weights")

    layers: list[dict[str, LoRAWeights]] = [{} for _ in range(layout.num_layers)]
    max_seen = 0
    for li in range(layout.num_layers):
        for group, modules in GROUPS.items():
            in_features, outs = layout.group(group)
            parts = [(i, found[(li, mod)]) for i, mod in enumerate(modules) if (li, mod) in found]
            if not parts:
                continue
            a_parts, b_blocks = [], []
            for i, pair in parts:
                mod = modules[i]
                if set(pair) != {"A", "B"}:
                    raise refuse(f"layer {li} {mod} has lora_{'A' if 'A' in pair else 'B'} without its pair")
                a, b = pair["A"], pair["B"]
                r = a.shape[0]
                if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_features or b.shape != (outs[i], r):
                    raise refuse(f"layer {li} {mod} has A {tuple(a.shape)} and B {tuple(b.shape)}, which do not fit "
                                 f"the base model's {in_features} -> {outs[i]} projection (another base model?)")
                if r > max_rank:
                    raise refuse(f"its rank {r} is above --max_lora_rank {max_rank}")
                max_seen = max(max_seen, r)
                # per-module rank, so that rank_pattern adapters get the scale PEFT gives them
                scale = alpha / (math.sqrt(r) if rslora else r)
                a_parts.append(a.to(torch.float32))
                b_blocks.append((i, b.to(torch.float32) * scale))
            total_r = sum(a.shape[0] for a in a_parts)
            b_full = torch.zeros(sum(outs), total_r)
            col = 0
            for i, b in b_blocks:
                row = sum(outs[:i])
                b_full[row:row + outs[i], col:col + b.shape[1]] = b
                col += b.shape[1]
            layers[li][group] = LoRAWeights(torch.cat(a_parts).to(dtype).contiguous(), b_full.to(dtype).contiguous())
    targets = tuple(m for m in MODULES if any((li, m) in found for li in range(layout.num_layers)))
    return LoRAAdapter(name, str(path), max_seen, targets, layers)


def _module_of(key: str) -> str:
    """`base_model.model.lm_head.base_layer.weight` -> `lm_head`: the module a saved tensor belongs to."""
    parts = key.removeprefix("base_model.model.").split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_") or part in ("base_layer", "weight", "bias"):
            return ".".join(parts[:i]) or key
    return key
