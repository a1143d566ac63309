"""The artifact store: files under one root directory (`$KAIP_HOME/artifacts`), addressed by relative paths.

A write goes to a temporary name in the target directory, is fsynced and then renamed over the final
name, so a reader never sees half a file and a crash leaves either the old file or the new one. The
sha256 of what was written is computed on the way through and returned, for the caller to record.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

CHUNK = 1024 * 1024


class ArtifactPathError(ValueError):
    """A path that is absolute, climbs out of the root or names nothing."""


@dataclass(frozen=True)
class FileInfo:
    path: str  # relative to the listed directory, POSIX separators
    is_dir: bool
    size: int | None


@dataclass(frozen=True)
class Written:
    path: str
    size: int
    sha256: str


def clean_path(path: str) -> str:
    """Normalise a relative artifact path; refuse anything that could leave the root."""
    if "\x00" in path or "\\" in path:
        raise ArtifactPathError(f"invalid artifact path {path!r}")
    parts = [p for p in PurePosixPath(path).parts if p not in ("", ".")]
    if path.startswith("/") or any(p == ".." for p in parts):
        raise ArtifactPathError(f"invalid artifact path {path!r}: it must be relative and stay inside the store")
    return "/".join(parts)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def uri(self, path: str = "") -> str:
        return (self.root / clean_path(path)).as_uri() if path else self.root.as_uri()

    def local_path(self, path: str) -> Path:
        return self.root / clean_path(path) if clean_path(path) else self.root

    # ---- writing ------------------------------------------------------------------------------------

    def _target(self, path: str) -> tuple[str, Path]:
        rel = clean_path(path)
        if not rel:
            raise ArtifactPathError("an artifact path is required")
        target = self.root / rel
        if target.is_dir():
            raise ArtifactPathError(f"artifact path {rel!r} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        return rel, target

    def write_chunks(self, path: str, chunks: Iterable[bytes]) -> Written:
        with self._atomic(path) as out:
            for chunk in chunks:
                out.write(chunk)
        return out.written

    def write_bytes(self, path: str, data: bytes) -> Written:
        return self.write_chunks(path, [data])

    async def write_stream(self, path: str, chunks: AsyncIterator[bytes]) -> Written:
        """Write an async byte stream (a request body) without holding it all in memory."""
        with self._atomic(path) as out:
            async for chunk in chunks:
                out.write(chunk)
        return out.written

    @contextlib.contextmanager
    def _atomic(self, path: str) -> Iterator[_AtomicFile]:
        """A file written under a temporary name, fsynced and renamed into place only if the block succeeds."""
        rel, target = self._target(path)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                out = _AtomicFile(fh, rel)
                yield out
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    # ---- reading ------------------------------------------------------------------------------------

    def is_file(self, path: str) -> bool:
        return self.local_path(path).is_file()

    def read_chunks(self, path: str) -> Iterator[bytes]:
        with open(self.local_path(path), "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def read_bytes(self, path: str) -> bytes:
        return self.local_path(path).read_bytes()

    def list(self, path: str = "") -> list[FileInfo]:
        """The direct children of a directory (MLflow's list_artifacts), paths relative to `path`'s parent
        root: `path/child`. Temporary files of writes in flight are not shown."""
        rel = clean_path(path)
        base = self.root / rel if rel else self.root
        if not base.is_dir():
            return []
        out = []
        for child in sorted(base.iterdir(), key=lambda p: p.name):
            if child.name.startswith(".") and child.name.endswith(".tmp"):
                continue
            child_rel = f"{rel}/{child.name}" if rel else child.name
            if child.is_dir():
                out.append(FileInfo(child_rel, True, None))
            else:
                out.append(FileInfo(child_rel, False, child.stat().st_size))
        return out

    def walk(self, path: str = "") -> list[str]:
        """Every file below `path`, as paths relative to the root, sorted."""
        rel = clean_path(path)
        base = self.root / rel if rel else self.root
        if base.is_file():
            return [rel]
        found = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                found.append(str(Path(dirpath, name).relative_to(self.root).as_posix()))
        return sorted(found)

    def delete(self, path: str) -> list[str]:
        """Remove a file or a directory tree; returns the files removed (relative to the root)."""
        rel = clean_path(path)
        if not rel:
            raise ArtifactPathError("refusing to delete the whole artifact store")
        target = self.root / rel
        removed = self.walk(rel) if target.exists() else []
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _AtomicFile:
    """Counts and hashes what is written, for the `Written` record."""

    def __init__(self, fh: BinaryIO, rel: str) -> None:
        self._fh = fh
        self._rel = rel
        self._digest = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        if chunk:
            self._fh.write(chunk)
            self._digest.update(chunk)
            self._size += len(chunk)

    @property
    def written(self) -> Written:
        return Written(self._rel, self._size, self._digest.hexdigest())

