"""Artifact storage: files written atomically, with their sha256."""

from kaip.artifacts.store import ArtifactPathError, ArtifactStore, FileInfo, Written, clean_path

__all__ = ["ArtifactPathError", "ArtifactStore", "FileInfo", "Written", "clean_path"]
