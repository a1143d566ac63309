"""Reading manifests out of a git repository with the `git` CLI: no checkout, no working tree touched.

`repoURL` is a local path or a `file://` URL (the embedded default has no network). A revision is a branch, a
tag, a commit or empty (HEAD); it resolves to a commit SHA, and files are read at that commit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class GitError(RuntimeError):
    pass


def repo_path(url: str) -> Path:
    if url.startswith("file://"):
        return Path(unquote(urlparse(url).path))
    if "://" in url or url.startswith("git@"):
        raise GitError(f"repoURL {url!r}: only local repositories (a path or a file:// URL) are reachable here")
    return Path(url)


def _git(repo: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30,
                              env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"})
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GitError(f"git {' '.join(args)}: {err}") from err
    if proc.returncode != 0:
        raise GitError(proc.stderr.strip() or f"git {' '.join(args)} exited {proc.returncode}")
    return proc.stdout


def resolve(url: str, revision: str | None) -> str:
    """The commit SHA a revision names; GitError with a message that says which part does not exist."""
    repo = repo_path(url)
    if not repo.exists():
        raise GitError(f"repository {url!r} does not exist")
    try:
        _git(repo, "rev-parse", "--git-dir")
    except GitError as err:
        raise GitError(f"{url!r} is not a git repository") from err
    rev = revision or "HEAD"
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except GitError as err:
        raise GitError(f"revision {rev!r} does not resolve to a commit in {url!r}") from err


def manifest_files(url: str, sha: str, path: str | None, recurse: bool) -> dict[str, str]:
    """`{file path: text}` of the manifests under `path` at commit `sha` (subfolders only with `recurse`)."""
    repo = repo_path(url)
    base = (path or "").strip("/")
    if base in ("", "."):
        base = ""
    args = ["ls-tree", "-r", "--name-only", sha]
    if base:
        args += ["--", base + "/"]
    names = [n for n in _git(repo, *args).splitlines() if n.endswith(MANIFEST_SUFFIXES)]
    if base and not names and not _git(repo, "ls-tree", sha, "--", base).strip():
        raise GitError(f"path {base!r} does not exist at revision {sha[:12]}")
    out = {}
    for name in sorted(names):
        rel = name[len(base) + 1:] if base else name
        if not recurse and "/" in rel:
            continue
        out[name] = _git(repo, "show", f"{sha}:{name}")
    return out
