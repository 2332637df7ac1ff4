"""Backups are for their owner only: store objects of a file:// store, the state dir,
the LMDB, spool, cache and mount.log are 0600 files in 0700 directories whatever the
umask, and `vaultfs init` tightens (or refuses) a state dir other users can enter.

Checked with real tools: ``find -perm /077`` and, as user nobody, ``zstd -dc`` of a band.
The vault lives in a directory every user can traverse (pytest's tmp_path is 0700,
which would hide everything and prove nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounts import alive, as_nobody, mount_pid, unmount, wait_for
from tests.vaultenv import VaultEnv


@pytest.fixture
def open_vault_env() -> Iterator[VaultEnv]:
    """A file:// vault in a world-traversable directory, commands run with umask 022."""
    base = Path(tempfile.mkdtemp(prefix="vaultfs-modes-", dir="/tmp"))
    base.chmod(0o755)
    old_umask = os.umask(0o022)
    env = VaultEnv(base, f"file://{base / 'store'}", band_size="1MiB")
    env.write_config()
    try:
        yield env
    finally:
        os.umask(old_umask)
        shutil.rmtree(base, ignore_errors=True)


def _loose(*paths: Path) -> list[str]:
    found = subprocess.run(
        ["find", *map(str, paths), "-perm", "/077"], capture_output=True, text=True, check=True
    )
    return found.stdout.split()


def test_store_and_state_are_private_whatever_the_umask(open_vault_env: VaultEnv) -> None:
    env = open_vault_env
    src = env.add_collection("p")
    src.parent.chmod(0o755)
    secret = os.urandom(300_000)
    (src / "private.bin").write_bytes(secret)
    (src / "private.bin").chmod(0o600)
    env.run("init")
    env.run("snapshot")
    env.run("check", "--read-data")
    env.run("index", "rebuild", "--from", "sidecars")  # a new LMDB, and the old one kept
    mnt = env.tmp / "mnt"
    mnt.mkdir()
    env.run("mount", str(mnt))  # logs to <state_dir>/mount.log
    pid = mount_pid(mnt)
    try:
        assert (mnt / "p" / "latest" / "private.bin").read_bytes() == secret
    finally:
        unmount(mnt)
        wait_for(lambda: not alive(pid), f"mount process {pid} to exit")
    assert (env.state_dir / "mount.log").exists()
    assert (env.state_dir / "catalog.lmdb.before-rebuild").exists()

    assert _loose(env.store_dir, env.state_dir) == []
    bands = sorted((env.store_dir / "bands").glob("*.tar.zst"))
    assert bands
    for band in bands:
        read = as_nobody("zstd", "-dc", str(band))
        assert read.returncode != 0 and b"Permission denied" in read.stderr, read
        assert secret not in read.stdout
    for path in (env.state_dir / "catalog.lmdb" / "data.mdb", env.state_dir / "mount.log"):
        read = as_nobody("cat", str(path))
        assert read.returncode != 0 and b"Permission denied" in read.stderr, read


def test_init_tightens_a_loose_state_dir(open_vault_env: VaultEnv) -> None:
    env = open_vault_env
    env.add_collection("p")
    env.state_dir.mkdir(mode=0o755)
    env.state_dir.chmod(0o755)
    (env.state_dir / "notes.txt").write_text("left by the owner\n")
    (env.state_dir / "notes.txt").chmod(0o644)
    done = env.run("init")
    assert f"the state directory {env.state_dir} was open to other users (mode 0755): now 0700" in done.stderr
    assert oct(env.state_dir.stat().st_mode & 0o777) == oct(0o700)
    assert _loose(env.state_dir) == []
    assert env.run("init").stderr == ""  # once private, nothing more to say


def test_init_refuses_a_loose_state_dir_of_another_user(open_vault_env: VaultEnv) -> None:
    env = open_vault_env
    env.add_collection("p")
    env.state_dir.mkdir()
    env.state_dir.chmod(0o755)
    os.chown(env.state_dir, 65534, 65534)
    refused = env.run("init", expect=2)
    assert "is open to other users (mode 0755) and belongs to uid 65534" in refused.stderr
    assert list(env.state_dir.iterdir()) == []  # nothing written into it
    assert not (env.tmp / "store" / "vault.json").exists()
