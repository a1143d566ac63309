"""KnowledgeBase reconciler: keep a knowledge base's index in step with its sources.

Files are not resources, so nothing tells the controller that one changed: it syncs on every change of the
object and again every `spec.syncIntervalSeconds`. A sync that finds nothing new costs a stat per file and
writes nothing. Status: documents, chunks, indexBytes, lastSyncTime (the last sync that changed the index or
observed a new spec), the files or records that could not be indexed, and the conditions Ready and
SourcesReadable.
"""

from __future__ import annotations

import logging
from typing import Any

from kaip.api.rag import KNOWLEDGE_BASE, KNOWLEDGE_BASE_FINALIZER
from kaip.controlplane.conditions import set_condition
from kaip.controlplane.events import EventRecorder
from kaip.controlplane.manager import Key, Result
from kaip.rag.embeddings import EmbeddingModelNotFound
from kaip.rag.pgvector import PgVectorUnavailable
from kaip.rag.service import RagService, unavailable_reason
from kaip.rag.sync import SyncReport, sync_knowledge_base
from kaip.store.store import Store, now_rfc3339

log = logging.getLogger(__name__)

MAX_PROBLEMS_SHOWN = 20
MODEL_RETRY_SECONDS = 30.0


def problems_message(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    return f"{len(problems)} not indexed: {shown}" + (f"; and {more} more" if more > 0 else "")


def apply_report(status: dict[str, Any], report: SyncReport, generation: int) -> None:
    """Status from a sync report (pure)."""
    changed = bool(report.files_changed or report.files_removed) or status.get("observedGeneration") != generation
    status.update(documents=report.documents, chunks=report.chunks, indexBytes=report.index_bytes,
                  observedGeneration=generation)
    if changed or "lastSyncTime" not in status:
        status["lastSyncTime"] = now_rfc3339()
        status["lastSync"] = {"embedded": report.embedded, "kept": report.kept, "removed": report.removed,
                              "filesChanged": len(report.files_changed), "filesRemoved": len(report.files_removed)}
    if report.problems:
        status["unindexed"] = report.problems[:MAX_PROBLEMS_SHOWN]
        set_condition(status, "SourcesReadable", False, "UnreadableSources", problems_message(report.problems),
                      generation=generation)
    else:
        status.pop("unindexed", None)
        set_condition(status, "SourcesReadable", True, "AllSourcesRead", "every source file was indexed",
                      generation=generation)
    set_condition(status, "Ready", True, "Indexed",
                  f"{report.chunks} chunks from {report.documents} documents", generation=generation)


class KnowledgeBaseReconciler:
    def __init__(self, store: Store, service: RagService, recorder: EventRecorder) -> None:
        self.store = store
        self.service = service
        self.recorder = recorder

    def reconcile(self, key: Key) -> Result | None:
        namespace, name = key  # type: ignore[misc]
        obj = self.store.try_get(KNOWLEDGE_BASE, namespace, name)
        if obj is None:
            self.service.evict(namespace, name)
            return None
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            self.service.delete_data(obj)
            self.store.mutate(KNOWLEDGE_BASE, namespace, name, _drop_finalizer)
            return None
        generation = int(meta.get("generation", 1))
        try:
            kb = self.service.open(obj)
        except (EmbeddingModelNotFound, PgVectorUnavailable) as err:
            message, reason = str(err), unavailable_reason(err)

            def missing(status: dict[str, Any], _obj: dict[str, Any]) -> None:
                status["observedGeneration"] = generation
                set_condition(status, "Ready", False, reason, message, generation=generation)
            self.store.update_status(KNOWLEDGE_BASE, namespace, name, missing)
            self.recorder.record(obj, "Warning", reason, message)
            return Result(requeue_after=MODEL_RETRY_SECONDS)
        report = sync_knowledge_base(kb)

        def synced(status: dict[str, Any], _obj: dict[str, Any]) -> None:
            apply_report(status, report, generation)
            status["vectorStore"] = kb.vector_store
        self.store.update_status(KNOWLEDGE_BASE, namespace, name, synced)
        if report.files_changed or report.files_removed:
            self.recorder.record(obj, "Normal", "Synced",
                                 f"{len(report.files_changed)} files changed, {len(report.files_removed)} removed: "
                                 f"{report.embedded} chunks embedded, {report.removed} removed")
        return Result(requeue_after=float(obj["spec"].get("syncIntervalSeconds", 60)))


def _drop_finalizer(obj: dict[str, Any]) -> dict[str, Any] | None:
    finalizers = obj["metadata"].get("finalizers") or []
    if KNOWLEDGE_BASE_FINALIZER not in finalizers:
        return None
    obj["metadata"]["finalizers"] = [f for f in finalizers if f != KNOWLEDGE_BASE_FINALIZER]
    return obj
