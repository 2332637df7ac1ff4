"""The collection root's own mode, owner, mtime and xattrs (issue 17, point 8).

The root has no entry in any listing, so a snapshot records its metadata in the
version record; the mount shows it on ``<collection>/vN/`` (and so through
``latest``), where the kernel's default_permissions enforce it for other users,
and a restore of the whole version gives it to the target directory.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounts import as_nobody, mounted, unmount
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.model import VersionInfo

OLD = 1_400_000_000 * 10**9
NOBODY = 65534


def make_home(src: Path) -> None:
    """A private home directory: 0700, owned by root, with an xattr and an old mtime."""
    write(src / "notes.txt", b"private\n", OLD)
    write(src / "sub" / "deep.txt", b"deeper\n", OLD)
    os.setxattr(src, "user.comment", b"the root's own")
    os.chown(src, 0, 0)
    src.chmod(0o700)
    os.utime(src, ns=(OLD, OLD))


def meta(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns


@pytest.fixture
def home_env(world_dir: Path) -> Iterator[VaultEnv]:
    """A file:// vault in a directory another user can reach (for the mount as nobody)."""
    env = VaultEnv(world_dir, f"file://{world_dir / 'store'}")
    env.write_config()
    try:
        yield env
    finally:
        unmount(world_dir / "mnt")


def test_mount_guards_the_version_root_as_the_source_did(home_env: VaultEnv) -> None:
    env = home_env
    src = env.add_collection("home")
    make_home(src)
    env.run("init")
    env.run("snapshot")  # v1: 0700 root:root
    os.chown(src, NOBODY, NOBODY)
    env.run("snapshot")  # v2: only the root's owner changed
    src.chmod(0o750)
    env.run("snapshot")  # v3: only the root's mode changed
    env.run("snapshot")  # nothing changed: no v4
    assert [v["version"] for v in env.versions("home")] == [1, 2, 3]

    with mounted(env, env.tmp / "mnt", "--allow-other") as mnt:
        v1, v2, latest = mnt / "home" / "v1", mnt / "home" / "v2", mnt / "home" / "latest"
        assert meta(v1) == (0o700, 0, 0, OLD)
        assert meta(v2) == (0o700, NOBODY, NOBODY, OLD)
        assert meta(latest) == (0o750, NOBODY, NOBODY, OLD)
        assert os.getxattr(v1, "user.comment") == b"the root's own"
        for denied in (
            as_nobody("ls", str(v1)),
            as_nobody("cat", str(v1 / "notes.txt")),
            as_nobody("ls", str(v1 / "sub")),
        ):
            assert denied.returncode != 0 and b"Permission denied" in denied.stderr, denied
        assert sorted(os.listdir(v1)) == ["notes.txt", "sub"]  # root may
        assert (v1 / "notes.txt").read_bytes() == b"private\n"
        allowed = as_nobody("cat", str(latest / "notes.txt"))  # v3 belongs to nobody
        assert allowed.returncode == 0 and allowed.stdout == b"private\n", allowed.stderr
        stat_out = subprocess.run(
            ["stat", "-c", "%a %u %g", str(v1)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert stat_out == ["700", "0", "0"]


def test_restore_of_a_whole_version_gives_the_target_the_root_metadata(
    vault_env: VaultEnv,
) -> None:
    env = vault_env
    src = env.add_collection("home")
    make_home(src)
    env.run("init")
    env.run("snapshot")
    whole = env.tmp / "whole"
    env.run("restore", "fetch", "home", "--to", str(whole))
    assert meta(whole) == meta(src) == (0o700, 0, 0, OLD)
    assert os.getxattr(whole, "user.comment") == b"the root's own"

    part = env.tmp / "part"  # only a path: the target is a place to put it, left as it was
    part.mkdir(mode=0o755)
    os.utime(part, ns=(OLD + 99, OLD + 99))
    before = meta(part)
    env.run("restore", "fetch", "home", "sub", "--to", str(part))
    assert (part / "sub" / "deep.txt").read_bytes() == b"deeper\n"
    os.utime(part, ns=(OLD + 99, OLD + 99))  # the new entry moved it; the mode must not move
    assert meta(part) == before
    assert os.listxattr(part) == []


def test_version_records_without_root_metadata_still_load() -> None:
    record = {"collection": "home", "number": 1, "created_ns": 5, "root": "00" * 32, "bands": [], "format": 1}
    assert VersionInfo.from_json(record).root_meta is None
