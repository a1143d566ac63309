"""The built-in `kaip-lora-sft` trainer: supervised fine-tuning of a causal LM with LoRA (transformers + peft) on
a JSONL chat dataset (`{"messages": [{"role": ..., "content": ...}, ...]}` per line), loss on assistant tokens
only.

Run by the `kaip-lora-sft` ClusterTrainingRuntime as `python -m kaip.training.lora_sft [--option value ...]`;
the dataset and the base model come from the TrainJob's initializer (KAIP_DATASET_PATH, KAIP_MODEL_PATH). Each
optimizer step's loss, learning rate and throughput go to `metrics.jsonl` in the job's directory; on success the
adapter and the merged model are saved as safetensors (with the tokenizer and its chat template) and
`publish.json` tells the controller what to record in tracking and the registry (run, metrics, dataset digest,
base model, hyperparameters, model version). Works under DDP (gloo) and resumes from its checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaip.jsonlines import records

IGNORE = -100


class DatasetError(ValueError):
    pass


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def load_chat_jsonl(path: Path) -> list[list[dict[str, str]]]:
    """Every line a conversation; a malformed one is an error naming the file and line."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for where, record in records(fh, path, DatasetError):
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DatasetError(f'{where}: expected an object with a non-empty "messages" list')
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                        not isinstance(m.get("content"), str):
                    raise DatasetError(f"{where}: messages[{i}] needs string 'role' and 'content'")
            if not any(m["role"] == "assistant" for m in messages):
                raise DatasetError(f"{where}: no assistant message to learn from")
            out.append(messages)
    if not out:
        raise DatasetError(f"{path}: no conversations")
    return out


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenize_chat(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> Example:
    """Render with the tokenizer's chat template, message by message: the tokens each assistant message adds are
    learned, everything else (system, user, template markup before it) is masked out of the loss."""
    ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(messages):
        rendered = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        full = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if full[:len(ids)] != ids:  # a template that rewrites earlier turns: fall back to the whole prefix
            full = ids + full[len(ids):]
        new = full[len(ids):]
        ids = list(full)
        labels += new if message["role"] == "assistant" else [IGNORE] * len(new)
    return Example(ids[:max_length], labels[:max_length])


def length_grouped(examples: list[Example], batch_size: int, seed: int, *, window: int = 16) -> list[Example]:
    """The examples reordered so that each run of `batch_size` has similar lengths (as transformers'
    `group_by_length`): within windows of `window` batches, sorted by length; then the batches shuffled. A batch
    pads to its longest row, so mixing 100- and 400-token conversations would spend most compute on padding."""
    span = batch_size * window
    grouped: list[list[Example]] = []
    for start in range(0, len(examples), span):
        part = sorted(examples[start:start + span], key=lambda ex: len(ex.input_ids), reverse=True)
        grouped += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    random.Random(seed).shuffle(grouped)
    return [ex for group in grouped for ex in group]


def batches(examples: list[Example], batch_size: int, pad_id: int, *, packing: bool,
            max_length: int) -> list[tuple[list[list[int]], list[list[int]], list[list[int]]]]:
    """(input_ids, labels, attention_mask) per batch; packing concatenates examples into full-length rows."""
    rows = examples
    if packing:
        packed: list[Example] = []
        cur_ids: list[int] = []
        cur_labels: list[int] = []
        for ex in examples:
            if cur_ids and len(cur_ids) + len(ex.input_ids) > max_length:
                packed.append(Example(cur_ids, cur_labels))
                cur_ids, cur_labels = [], []
            cur_ids = cur_ids + ex.input_ids
            cur_labels = cur_labels + ex.labels
        if cur_ids:
            packed.append(Example(cur_ids[:max_length], cur_labels[:max_length]))
        rows = packed
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(ex.input_ids) for ex in chunk)
        out.append(([ex.input_ids + [pad_id] * (width - len(ex.input_ids)) for ex in chunk],
                    [ex.labels + [IGNORE] * (width - len(ex.labels)) for ex in chunk],
                    [[1] * len(ex.input_ids) + [0] * (width - len(ex.input_ids)) for ex in chunk]))
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kaip-lora-sft")
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps; overrides --epochs when set")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", default="q_proj,v_proj")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-split", type=float, default=0.1)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--group-by-length", action="store_true", help="batch conversations of similar length together")
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--register", default="", help="register the merged model under this name")
    p.add_argument("--dataset", default=os.environ.get("KAIP_DATASET_PATH", ""))
    p.add_argument("--model", default=os.environ.get("KAIP_MODEL_PATH", ""))
    p.add_argument("--output", default="")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.dataset or not args.model:
        print("kaip-lora-sft: a dataset and a model are required (the TrainJob's initializer.dataset/model "
              "storageUri, or --dataset/--model)", file=sys.stderr)
        return 2
    try:
        conversations = load_chat_jsonl(Path(args.dataset))  # before the heavy imports: bad data fails fast
    except (OSError, DatasetError) as err:
        print(f"kaip-lora-sft: {err}", file=sys.stderr)
        return 1
    return train(args, conversations)


def train(args: argparse.Namespace, conversations: list[list[dict[str, str]]]) -> int:
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kaip.training.checkpoint import Checkpointer, report_progress

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    train_dir = Path(os.environ.get("KAIP_TRAIN_DIR") or args.output or ".")
    output = Path(args.output) if args.output else train_dir / "output"
    train_dir.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=[m.strip() for m in args.target_modules.split(",") if m.strip()],
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)

    examples = [tokenize_chat(tokenizer, conv, args.max_seq_length) for conv in conversations]
    order = list(range(len(examples)))
    random.Random(args.seed).shuffle(order)
    n_eval = int(round(len(examples) * args.eval_split)) if len(examples) > 1 else 0
    if args.eval_split > 0 and len(examples) > 1:
        n_eval = max(1, n_eval)
    eval_set = [examples[i] for i in order[:n_eval]]
    train_set = [examples[i] for i in order[n_eval:]]
    shard = train_set[rank::world] if world > 1 else train_set
    if args.group_by_length and not args.packing:
        shard = length_grouped(shard, args.batch_size, args.seed)
    pad = int(tokenizer.pad_token_id)
    train_batches = batches(shard, args.batch_size, pad, packing=args.packing, max_length=args.max_seq_length)
    eval_batches = batches(eval_set, args.batch_size, pad, packing=False, max_length=args.max_seq_length)
    per_epoch = max(1, len(train_batches) // args.gradient_accumulation_steps)
    total = args.max_steps or per_epoch * args.epochs

    net: Any = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.learning_rate)
    warm = args.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) if warm and s < warm else max(0.0, (total - s) / max(1, total - warm)))

    def evaluate() -> float | None:
        if not eval_batches:
            return None
        model.eval()
        losses = []
        with torch.no_grad():
            for ids, labels, mask in eval_batches:
                out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            labels=torch.tensor(labels))
                losses.append(float(out.loss))
        model.train()
        return sum(losses) / len(losses)

    ckpt = Checkpointer(os.environ.get("KAIP_CHECKPOINT_DIR") or train_dir / "checkpoints", keep=2)
    restored = ckpt.load(model=model, optimizer=opt, scheduler=sched)
    step = restored.step if restored else 0
    initial_eval = restored.extra.get("initial_eval_loss") if restored else evaluate()
    metrics_file = open(train_dir / "metrics.jsonl", "a", buffering=1) if rank == 0 else None

    def log(values: dict[str, float | None], at: int) -> None:
        if metrics_file is not None:
            stamp = int(time.time() * 1000)
            for key, value in values.items():
                if value is not None and math.isfinite(value):
                    metrics_file.write(json.dumps({"key": key, "value": value, "step": at, "timestamp": stamp}) + "\n")

    if not restored:
        log({"eval_loss": initial_eval}, 0)
    model.train()
    started = time.perf_counter()
    done_steps = 0
    trained_tokens = 0
    loop_seconds = 0.0
    while step < total:
        index = step * args.gradient_accumulation_steps
        tick = time.perf_counter()
        tokens = 0
        loss_sum = 0.0
        for micro in range(args.gradient_accumulation_steps):
            ids, labels, mask = train_batches[(index + micro) % len(train_batches)]
            out = net(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
            (out.loss / args.gradient_accumulation_steps).backward()
            loss_sum += float(out.loss) / args.gradient_accumulation_steps
            tokens += sum(sum(row) for row in mask)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        done_steps += 1
        elapsed = time.perf_counter() - tick
        trained_tokens += tokens * world
        loop_seconds += elapsed
        rate = tokens * world / elapsed if elapsed > 0 else None
        log({"loss": loss_sum, "learning_rate": lr, "tokens_per_second": rate}, step)
        spent = time.perf_counter() - started
        report_progress(step, total, loss=loss_sum, learning_rate=lr, tokens_per_second=rate,
                        eta_seconds=spent / done_steps * (total - step))
        stop = ckpt.should_stop()
        if step % args.save_steps == 0 or stop:
            ckpt.save(step, model=model, optimizer=opt, scheduler=sched, trainable_only=True,
                      data={"batch": (step * args.gradient_accumulation_steps) % len(train_batches)},
                      extra={"initial_eval_loss": initial_eval})
        if stop:
            ckpt.exit()
    final_eval = evaluate()
    if rank == 0:
        log({"eval_loss": final_eval}, step)
        adapter_dir, merged_dir = output / "adapter", output / "merged"
        model.save_pretrained(adapter_dir, safe_serialization=True)
        tokenizer.save_pretrained(adapter_dir)
        merged = model.merge_and_unload()
        merged.save_pretrained(merged_dir, safe_serialization=True)
        tokenizer.save_pretrained(merged_dir)
        dataset = Path(args.dataset)
        throughput = trained_tokens / loop_seconds if loop_seconds else None
        hyper = {k: v for k, v in vars(args).items() if k not in ("dataset", "model", "output", "register")}
        publish = {"register": args.register or None, "outputs": {"adapter": str(adapter_dir),
                                                                  "merged": str(merged_dir)},
                   "dataset": {"name": dataset.name, "path": str(dataset.resolve()), "digest": file_digest(dataset)},
                   "base_model": os.environ.get("KAIP_MODEL_URI") or args.model,
                   "params": {k: str(v) for k, v in hyper.items()} | {"world_size": str(world), "steps": str(total)},
                   "final_metrics": {"eval_loss": final_eval, "initial_eval_loss": initial_eval,
                                     "train_loss": loss_sum if done_steps else None,
                                     "train_tokens_per_second": throughput},
                   "code_version": _code_version()}
        tmp = train_dir / "publish.json.tmp"
        tmp.write_text(json.dumps(publish, indent=1))
        os.replace(tmp, train_dir / "publish.json")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _code_version() -> str:
    from kaip import __version__
    return f"kaip {__version__}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
