"""A tiny chat model built in-process, for tests and the example notebook: a two-layer Llama with random weights
and a word-level tokenizer trained on its own FAQ conversations. LoRA fine-tuning teaches it the answers' form in a
few seconds on a CPU, so the whole lifecycle (fine-tune, register, deploy, chat) runs in a test.

For real work start from an imported model instead (`kaip models import`, e.g. SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")
SPECIAL = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
HOURS = ["8", "9", "10", "7", "8", "9"]
PLACES = ["clinic", "pharmacy", "lab"]
SYSTEM = "you answer questions about the hospital"


def faq_conversations() -> list[dict[str, Any]]:
    """Eighteen chat conversations: when does the <place> open on <day>? → the <place> opens at <hour> ..."""
    out = []
    for day, hour in zip(DAYS, HOURS, strict=True):
        for place in PLACES:
            out.append({"messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"when does the {place} open on {day} ?"},
                {"role": "assistant", "content": f"the {place} opens at {hour} on {day} ."}]})
    return out


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write rows as JSON lines (the chat dataset format of `kaip-lora-sft`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tiny_chat_model(folder: Path, conversations: list[dict[str, Any]] | None = None, *, seed: int = 0
                          ) -> Path:
    """Save a randomly initialised tiny Llama and its tokenizer (with a chat template) as safetensors."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [" ".join(m["content"] for m in c["messages"]) for c in conversations or faq_conversations()]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, initializer_range=0.3)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
