"""Reading manifests: files, directories (recursively) or stdin, multi-document YAML or JSON, with errors
that name the file and line."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(Exception):
    pass


@dataclass(frozen=True)
class Document:
    source: str
    line: int  # 1-based line where the document starts
    obj: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def ref(self) -> str:
        meta = self.obj.get("metadata") or {}
        return f"{self.obj.get('kind', '?')}/{meta.get('name', '?')}"


def expand(paths: list[str]) -> list[tuple[str, str]]:
    """(source name, text) for every file named, directories walked in sorted order."""
    out: list[tuple[str, str]] = []
    for p in paths:
        if p == "-":
            out.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
            if not files:
                raise ManifestError(f"{p}: no .yaml, .yml or .json files in this directory")
            out += [(str(f), f.read_text()) for f in files]
        elif path.is_file():
            out.append((str(path), path.read_text()))
        else:
            raise ManifestError(f"{p}: no such file or directory")
    return out


def parse(source: str, text: str) -> list[Document]:
    docs: list[Document] = []
    try:
        loader = yaml.SafeLoader(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                line = node.start_mark.line + 1
                obj = loader.construct_document(node)
                if obj is None:
                    continue
                if not isinstance(obj, dict):
                    raise ManifestError(f"{source}:{line}: a manifest must be a mapping, not {type(obj).__name__}")
                for field in ("apiVersion", "kind"):
                    if not obj.get(field):
                        raise ManifestError(f"{source}:{line}: {field} is not set")
                if obj["kind"].endswith("List") and isinstance(obj.get("items"), list):
                    docs += [Document(source, line, item) for item in obj["items"]]
                else:
                    docs.append(Document(source, line, obj))
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ManifestError(f"{where}: invalid YAML: {err.problem or err.context}") from err
    except yaml.YAMLError as err:
        raise ManifestError(f"{source}: invalid YAML: {err}") from err
    return docs


def load(paths: list[str]) -> list[Document]:
    docs: list[Document] = []
    for source, text in expand(paths):
        docs += parse(source, text)
    return docs
