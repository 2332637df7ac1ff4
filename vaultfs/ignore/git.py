"""What vaultfs asks of a git repository: where it is, which files it tracks, and the
paths of its repository-wide ignore files.

Tracked files come from ``git ls-files -z`` (the index, exactly as git reads it, with
sparse and split indexes). It runs with ``safe.directory=*`` because root backs up
repositories owned by other users (git refuses those otherwise), and ``core.fsmonitor``
off: ``ls-files`` runs no hooks, and no repository's config may make it start a program.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess

from vaultfs.fsutil import kind_of

GIT_SAFE = ("-c", "safe.directory=*", "-c", "core.fsmonitor=false")


def git_program() -> str | None:
    return shutil.which("git")


def enclosing_work_tree(path: bytes) -> bytes | None:
    """The top of the git work tree `path` lies in (`path` itself excluded: the caller
    sees its own ``.git``), found by looking for ``.git`` in each parent."""
    here = os.path.dirname(path)
    while True:
        if os.path.lexists(os.path.join(here, b".git")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def tracked_paths(top: bytes) -> tuple[frozenset[bytes] | None, str | None]:
    """The paths the index of the repository at `top` holds (relative to `top`), or None and
    why when they cannot be known (no ``git`` program, a repository git cannot read)."""
    git = git_program()
    if git is None:
        return None, "git is not installed"
    try:
        out = subprocess.run(
            [git, *GIT_SAFE, "-C", os.fsdecode(top), "ls-files", "-z", "--cached"],
            capture_output=True,
            check=False,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"git ls-files failed ({e})"
    if out.returncode != 0:
        first = out.stderr.decode("utf-8", "replace").strip().splitlines()
        return None, f"git ls-files failed ({first[0] if first else f'status {out.returncode}'})"
    return frozenset(p for p in out.stdout.split(b"\0") if p), None


def read_regular(path: bytes, *, follow: bool = True) -> bytes:
    """The bytes of the regular file at `path` (an ignore file, a ``.git`` file); OSError
    if it cannot be read, also when it is no regular file: its ``strerror`` says what it is.

    Anything can stand where a ``.gitignore`` is expected. A FIFO would block a plain
    ``open`` until a writer comes (the snapshot would hang, holding the vault lock), and
    ``/dev/zero`` would be read until memory runs out; so the path is pinned with
    ``O_PATH`` (which opens nothing), checked to be a regular file, and only then opened
    through that handle, the same inode. ``follow=False`` is git's rule for the
    ``.gitignore`` files in a work tree: a symlink is not followed (git warns and skips it).
    """
    pinned = os.open(path, os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    try:
        mode = os.fstat(pinned).st_mode
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "a symbolic link: git does not follow it", path)
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"a {kind_of(mode)}, not a regular file", path)
        # Following this magic link is the point: it leads to the pinned inode itself.
        with open(f"/proc/self/fd/{pinned}", "rb") as f:
            return f.read()
    finally:
        os.close(pinned)


def git_dir(top: bytes) -> bytes:
    """The repository directory of the work tree at `top`: ``.git``, or where a ``.git``
    file (a linked worktree, a submodule) points."""
    dot_git = os.path.join(top, b".git")
    if os.path.isdir(dot_git):
        return dot_git
    try:
        line = read_regular(dot_git).split(b"\n", 1)[0].strip()
    except OSError:
        return dot_git
    if not line.startswith(b"gitdir:"):
        return dot_git
    target = line[len(b"gitdir:") :].strip()
    return os.path.normpath(os.path.join(top, target))


def info_exclude(top: bytes) -> bytes:
    """``info/exclude`` of the repository (of the common directory for a linked worktree)."""
    gd = git_dir(top)
    common = os.path.join(gd, b"commondir")
    with contextlib.suppress(OSError):  # no commondir: not a linked worktree
        gd = os.path.normpath(os.path.join(gd, read_regular(common).strip()))
    return os.path.join(gd, b"info", b"exclude")


def excludes_file(top: bytes, default: bytes | None) -> tuple[bytes | None, str | None]:
    """``core.excludesFile`` as git itself resolves it for the repository at `top` (git
    reads its global config where ``GIT_CONFIG_GLOBAL``, ``XDG_CONFIG_HOME`` and ``HOME``
    say, and expands ``~``), else `default` (git's own default, which no git command
    reports: `vaultfs.cli.main` derives it from the environment as git does); or None and
    why without git."""
    git = git_program()
    if git is None:
        return None, "git is not installed"
    out = subprocess.run(
        [git, *GIT_SAFE, "-C", os.fsdecode(top), "config", "--path", "--get", "core.excludesFile"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    value = out.stdout.rstrip(b"\n")
    if out.returncode == 0 and value:
        return (value if os.path.isabs(value) else os.path.join(top, value)), None
    return default, None if default is not None else "neither XDG_CONFIG_HOME nor HOME is set"
