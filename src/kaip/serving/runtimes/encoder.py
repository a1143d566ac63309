"""Encoder tasks of `kaip-huggingface`, served as KServe's huggingfaceserver serves them: text embeddings, sequence
classification, token classification and fill-mask, over KServe v1 (`instances`: texts) and Open Inference v2 (one
BYTES input), and embeddings also over OpenAI's `/openai/v1/embeddings` (`openai_api.py`).

A sentence-transformers folder (`modules.json`) runs through sentence-transformers itself, so that its pooling,
Dense and Normalize modules apply exactly as `SentenceTransformer(folder).encode` applies them; any other encoder
is mean-pooled over its tokens and L2-normalised, as upstream does. Texts are tokenized together (padded, truncated
at `max_model_len`) and run in one forward pass per MAX_BATCH texts; one forward pass runs at a time, on torch's
own threads, as the generative engines run theirs."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from kaip.serving.runtimes import oip
from kaip.serving.runtimes.engine import EngineStats, TokenizerText
from kaip.serving.runtimes.server import Model, ModelError
from kaip.serving.runtimes.tasks import (
    FILL_MASK,
    SEQUENCE_CLASSIFICATION,
    TEXT_EMBEDDING,
    TOKEN_CLASSIFICATION,
)

MAX_BATCH = 32  # texts per forward pass (sentence-transformers' default batch): bounds the activations' memory
FILL_MASK_BATCH = 8  # a masked LM's logits are [texts, tokens, vocabulary]
# Config keys that bound a model's input length (upstream's list, after vLLM's); the smallest present wins.
MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_sequence_length", "max_seq_length", "seq_len")
OUTPUTS = ("index", "probabilities", "logits")  # what a classifier answers: upstream's default, flags
T = TypeVar("T")


class InputError(ValueError):
    """A request the model cannot take (answered 400)."""


def max_length(config: Any, tokenizer: Any, requested: int | None, limit: int | None = None) -> int:
    """The token limit: the model's (the smallest of its config's length keys, or `limit`, capped by the
    tokenizer's own), or `--max_model_len` when that is not more; more is refused, as upstream refuses it."""
    if limit is None:
        found = [v for k in MAX_LEN_KEYS if isinstance(v := getattr(config, k, None), int) and v > 0]
        limit = min(found) if found else 2048
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < limit:
        limit = tokenizer_max  # RoBERTa: 514 positions, 512 usable
    if requested is None:
        return limit
    if requested < 1 or requested > limit:
        raise ValueError(f"--max_model_len={requested} is outside what the model takes (1 to {limit} tokens)")
    return requested


class EncoderEngine(TokenizerText):
    """An encoder model for one task. `tokenize`, `embed` and `stats` are what the OpenAI routes use; the rest
    serves `EncoderModel`."""

    def __init__(self, model_dir: str | Path, model_name: str, task: str, *, max_model_len: int | None = None,
                 dtype: str = "float32", add_special_tokens: bool = True) -> None:
        import torch

        self.torch = torch
        self.model_name = model_name
        self.task = task
        self.add_special_tokens = add_special_tokens
        folder = Path(model_dir)
        torch_dtype = getattr(torch, dtype)
        self.sentence_transformer: Any = None
        self.embedding_dim: int | None = None
        if task == TEXT_EMBEDDING and (folder / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
            if torch_dtype != torch.float32:
                st.to(torch_dtype)
            self.tokenizer = st.tokenizer
            self.max_model_len = max_length(None, st.tokenizer, max_model_len, limit=st.max_seq_length or None)
            st.max_seq_length = self.max_model_len
            self.embedding_dim = int(st.get_embedding_dimension())
            self.sentence_transformer = self.model = st
            self.id2label: dict[int, str] = {}
        else:
            from transformers import AutoConfig, AutoTokenizer

            config = AutoConfig.from_pretrained(folder)
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = _model_class(task).from_pretrained(folder, dtype=torch_dtype).eval()
            self._ensure_pad_token()
            self.max_model_len = max_length(config, self.tokenizer, max_model_len)
            if task == TEXT_EMBEDDING:
                self.embedding_dim = int(config.hidden_size)
            self.id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        self.num_labels = len(self.id2label)
        # A fast tokenizer used from two threads at once fails ("Already borrowed"): forward passes tokenize under
        # the lock, the OpenAI routes count tokens on the event loop with a copy of their own.
        self._counting_tokenizer = copy.deepcopy(self.tokenizer)
        self._lock = threading.Lock()  # one forward pass at a time
        self._stats_lock = threading.Lock()
        self._running = self._waiting = 0

    def _ensure_pad_token(self) -> None:
        """Batches are padded: a tokenizer without a pad token pads with its end/unknown token (masked out), or,
        like upstream, with a new [PAD] token."""
        tok = self.tokenizer
        if tok.pad_token is not None:
            return
        if tok.eos_token is not None or tok.unk_token is not None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "[PAD]"})
            self.model.resize_token_embeddings(len(tok))

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids = self._counting_tokenizer(text, add_special_tokens=add_special_tokens and self.add_special_tokens)
        return list(ids["input_ids"])

    # ---- forward passes -----------------------------------------------------------------------------------

    def _serialized(self, fn: Callable[[], T]) -> T:
        with self._stats_lock:
            self._waiting += 1
        with self._lock:
            with self._stats_lock:
                self._waiting -= 1
                self._running = 1
            try:
                with self.torch.inference_mode():
                    return fn()
            finally:
                with self._stats_lock:
                    self._running = 0

    def _batches(self, texts: Sequence[str], size: int = MAX_BATCH) -> list[Any]:
        """One forward pass per `size` texts: (tokenized batch, model outputs)."""
        out = []
        for start in range(0, len(texts), size):
            enc = self.tokenizer(list(texts[start:start + size]), padding=True, truncation=True,
                                 max_length=self.max_model_len, add_special_tokens=self.add_special_tokens,
                                 return_tensors="pt")
            out.append((enc, self.model(**enc, return_dict=True)))
        return out

    def embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim]."""
        if self.sentence_transformer is not None:
            vectors = self._serialized(lambda: self.sentence_transformer.encode(
                list(texts), batch_size=MAX_BATCH, convert_to_numpy=True, show_progress_bar=False))
            return np.ascontiguousarray(vectors, dtype=np.float32)
        torch = self.torch
        parts = []
        for enc, out in self._serialized(lambda: self._batches(texts)):
            hidden = out.last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            parts.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy())
        return np.concatenate(parts).astype(np.float32)

    def sequence_logits(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), labels]."""
        return np.concatenate([out.logits.float().numpy() for _, out in self._serialized(lambda: self._batches(texts))])

    def token_logits(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text, float32 [its tokens (special ones included), labels]."""
        rows = []
        for enc, out in self._serialized(lambda: self._batches(texts)):
            logits = out.logits.float().numpy()
            for i, mask in enumerate(enc["attention_mask"].numpy().astype(bool)):
                rows.append(logits[i][mask])
        return rows

    def fill_masks(self, texts: Sequence[str]) -> list[str]:
        """Per text, the most likely token at each mask, decoded together (upstream's answer)."""
        mask_id = self.tokenizer.mask_token_id
        if mask_id is None:
            raise InputError("the tokenizer has no mask token")
        out: list[str] = []
        for enc, result in self._serialized(lambda: self._batches(texts, FILL_MASK_BATCH)):
            for i, ids in enumerate(enc["input_ids"]):
                where = (ids == mask_id).nonzero().flatten()
                if len(where) == 0:
                    raise InputError(f"instance {len(out)} has no {self.tokenizer.mask_token} token "
                                     "(or it was cut at max_model_len)")
                out.append(str(self.tokenizer.decode(result.logits[i, where].argmax(dim=-1).tolist())))
        return out

    # ---- what the OpenAI routes use -----------------------------------------------------------------------

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = await asyncio.to_thread(self.embeddings, texts)
        return vectors.tolist()  # type: ignore[no-any-return]

    def stats(self) -> EngineStats:
        with self._stats_lock:
            return EngineStats(running=self._running, waiting=self._waiting)


def _model_class(task: str) -> Any:
    import transformers

    return {TEXT_EMBEDDING: transformers.AutoModel,
            SEQUENCE_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
            TOKEN_CLASSIFICATION: transformers.AutoModelForTokenClassification,
            FILL_MASK: transformers.AutoModelForMaskedLM}[task]


# ---- KServe v1 and Open Inference v2 ----------------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def _per_label(row: np.ndarray, output: str) -> dict[int, float]:
    """Upstream's {label index: value}: probabilities rounded to 4 decimals, logits as they are."""
    if output == "probabilities":
        return {j: float(f"{p:.4f}") for j, p in enumerate(_softmax(row))}
    return {j: float(v) for j, v in enumerate(row)}


def check_output(task: str, output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}")
    if output != "index" and task not in (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION):
        raise ValueError(f"--return_probabilities and --return_raw_logits apply to {SEQUENCE_CLASSIFICATION} and "
                         f"{TOKEN_CLASSIFICATION}, not {task}")


def texts_from_instances(instances: list[Any]) -> list[str]:
    if not instances:
        raise ModelError("'instances' is empty: send a list of texts")
    for i, text in enumerate(instances):
        if not isinstance(text, str):
            raise ModelError(f"instance {i} is not a string: this model takes texts "
                             f"(got {type(text).__name__})")
    return list(instances)


def texts_from_tensor(inputs: list[oip.Tensor]) -> list[str]:
    if len(inputs) != 1:
        raise ModelError(f"expected exactly one input tensor (BYTES, the texts), got {len(inputs)}")
    tensor = inputs[0]
    if tensor.datatype != "BYTES":
        raise ModelError(f"input '{tensor.name}': datatype {tensor.datatype} is not BYTES (this model takes texts)")
    texts = []
    for item in tensor.array.reshape(-1).tolist():
        try:
            texts.append(item.decode("utf-8") if isinstance(item, bytes) else str(item))
        except UnicodeDecodeError as err:
            raise ModelError(f"input '{tensor.name}': element {len(texts)} is not UTF-8 text: {err}") from err
    if not texts:
        raise ModelError(f"input '{tensor.name}' has no texts")
    return texts


class EncoderModel(Model):
    """The v1/v2 face of an `EncoderEngine`: texts in, the task's answer out, in upstream's v1 shapes.

    v1 `predictions`: text_embedding → vectors; sequence_classification → label indices, or per text
    {index: probability} (`--return_probabilities`) / {index: logit} (`--return_raw_logits`); token_classification
    → per text [[label index per token]] or [{index: value} per token]; fill_mask → per text the decoded tokens.
    v2 `output-0`: FP32 [n, dim]; INT64 [n] or FP32 [n, labels]; INT64 [n, tokens] (-1 past a text's end) or FP32
    [n, tokens, labels]; BYTES [n]."""

    platform = "huggingface"

    def __init__(self, engine: EncoderEngine, output: str = "index") -> None:
        check_output(engine.task, output)
        self.engine = engine
        self.name = engine.model_name
        self.output = output
        self.ready = True

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        task, labels = self.engine.task, self.engine.num_labels or -1
        meta["inputs"] = [{"name": "input-0", "datatype": "BYTES", "shape": [-1]}]
        if task == TEXT_EMBEDDING:
            out = {"datatype": "FP32", "shape": [-1, self.engine.embedding_dim or -1]}
        elif task == FILL_MASK:
            out = {"datatype": "BYTES", "shape": [-1]}
        elif self.output == "index":
            out = {"datatype": "INT64", "shape": [-1] if task == SEQUENCE_CLASSIFICATION else [-1, -1]}
        else:
            out = {"datatype": "FP32", "shape": [-1, labels] if task == SEQUENCE_CLASSIFICATION else [-1, -1, labels]}
        meta["outputs"] = [{"name": "output-0", **out}]
        return meta

    def _run(self, texts: list[str], fn: Callable[[list[str]], T]) -> T:
        try:
            return fn(texts)
        except InputError as err:
            raise ModelError(str(err)) from err

    def predict(self, instances: list[Any]) -> list[Any]:
        texts = texts_from_instances(instances)
        engine, task = self.engine, self.engine.task
        if task == TEXT_EMBEDDING:
            return self._run(texts, engine.embeddings).tolist()  # type: ignore[no-any-return]
        if task == FILL_MASK:
            return self._run(texts, engine.fill_masks)
        if task == SEQUENCE_CLASSIFICATION:
            logits = self._run(texts, engine.sequence_logits)
            if self.output == "index":
                return [int(i) for i in logits.argmax(axis=-1)]
            return [_per_label(row, self.output) for row in logits]
        rows = self._run(texts, engine.token_logits)
        if self.output == "index":
            return [[[int(i) for i in row.argmax(axis=-1)]] for row in rows]  # upstream's extra nesting
        return [[_per_label(token, self.output) for token in row] for row in rows]

    def infer(self, inputs: list[oip.Tensor], parameters: dict[str, Any]) -> dict[str, np.ndarray]:
        texts = texts_from_tensor(inputs)
        engine, task = self.engine, self.engine.task
        if task == TEXT_EMBEDDING:
            return {"output-0": self._run(texts, engine.embeddings)}
        if task == FILL_MASK:
            return {"output-0": np.array(self._run(texts, engine.fill_masks), dtype=np.object_)}
        if task == SEQUENCE_CLASSIFICATION:
            logits = self._run(texts, engine.sequence_logits)
            if self.output == "index":
                return {"output-0": logits.argmax(axis=-1).astype(np.int64)}
            return {"output-0": (_softmax(logits) if self.output == "probabilities" else logits).astype(np.float32)}
        rows = self._run(texts, engine.token_logits)
        width = max(len(r) for r in rows)
        if self.output == "index":
            labels = np.full((len(rows), width), -1, dtype=np.int64)
            for i, row in enumerate(rows):
                labels[i, :len(row)] = row.argmax(axis=-1)
            return {"output-0": labels}
        values = np.zeros((len(rows), width, rows[0].shape[-1]), dtype=np.float32)
        for i, row in enumerate(rows):
            values[i, :len(row)] = _softmax(row) if self.output == "probabilities" else row
        return {"output-0": values}
