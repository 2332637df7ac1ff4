"""Listings taken over from the previous version (the directory memo, catalog/schema.py).

The oracle: a vault that has never seen the tree builds every listing from scratch, and
trees are named by their content, so after any change the incremental snapshot's root
tree must equal the fresh vault's. Each step below changes something that a memo keyed
on too little (names only, mtimes only, the directory's own stat) would miss.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from tests.trees import diff_r, make_every_kind, write
from tests.vaultenv import VaultEnv


def latest_root(env: VaultEnv, collection: str) -> tuple[bytes, int, int]:
    """The latest version's root tree, regular files and their bytes."""
    vault = env.open_vault()
    try:
        latest = vault.catalog.latest_version(collection)
        assert latest is not None
        return bytes(latest.root), latest.stats.files, latest.stats.bytes
    finally:
        vault.close()


def fresh_root(tmp: Path, src: Path) -> tuple[bytes, int, int]:
    """`latest_root` of a first snapshot of `src` into a new vault."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    env = VaultEnv(tmp, f"file://{tmp / 'store'}")
    env.collections["c"] = (src, "cold")
    env.write_config()
    env.run("init")
    env.run("snapshot", expect=None)
    return latest_root(env, "c")


def same_size_rewrite(path: Path) -> None:
    """New bytes, same size, old mtime put back: only ctime tells."""
    st = path.stat()
    data = path.read_bytes()
    path.write_bytes(bytes(b ^ 0xFF for b in data[:8]) + data[8:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def hard_link_elsewhere(src: Path) -> None:
    os.link(src / "nested/deeper/deepest/leaf.txt", src / "photos/leaf-link.txt")


def retarget_symlink(src: Path) -> None:
    (src / "link_rel").unlink()
    os.symlink("empty", src / "link_rel")


def rename_dir(src: Path) -> None:
    (src / "nested" / "deeper").rename(src / "nested" / "renamed")


def remove_hard_link_first_name(src: Path) -> None:
    (src / "hard_a").unlink()  # "hard_c" and "nested/hard_b" remain; the first name changes


STEPS: list[tuple[str, Callable[[Path], object]]] = [
    ("nothing", lambda src: None),
    ("deep content, new size", lambda src: write(src / "nested/deeper/deepest/leaf.txt", b"v2 longer")),
    (
        "deep content, same size and mtime",
        lambda src: same_size_rewrite(src / "nested/deeper/deepest/leaf.txt"),
    ),
    ("user xattr on a file", lambda src: os.setxattr(src / "photos/2019/img_0001.raw", "user.k", b"v")),
    ("user xattr on a directory", lambda src: os.setxattr(src / "nested/deeper", "user.k", b"v")),
    ("mode of a file", lambda src: (src / "nested/deeper/deepest/leaf.txt").chmod(0o640)),
    ("file added deep", lambda src: write(src / "nested/deeper/deepest/new.txt", b"new")),
    ("file removed deep", lambda src: (src / "nested/deeper/deepest/new.txt").unlink()),
    ("hard link from another directory", hard_link_elsewhere),
    ("first name of a hard-linked file removed", remove_hard_link_first_name),
    ("symlink retargeted", retarget_symlink),
    ("directory renamed", rename_dir),
    ("directory removed", lambda src: shutil.rmtree(src / "nested" / "renamed")),
    ("nothing again", lambda src: None),
]


def test_incremental_trees_equal_a_fresh_scan_after_every_change(
    file_vault: VaultEnv, tmp_path: Path
) -> None:
    src = file_vault.add_collection("c")
    make_every_kind(src)
    write(src / "nested/deeper/deepest/leaf.txt", b"v1")
    for i in range(30):  # enough directories that most are unchanged by a step
        write(src / f"many/d{i:02}/f.txt", f"file {i}".encode())
    file_vault.run("init")
    first = file_vault.json("snapshot", expect=None)["collections"][0]
    assert first["dirs_reused"] == 0

    for what, change in STEPS:
        change(src)
        out = file_vault.json("snapshot", expect=None)["collections"][0]
        assert latest_root(file_vault, "c") == fresh_root(tmp_path / "fresh", src), what
        assert out["unchanged"] == (what.startswith("nothing")), what
        # Most directories were not touched: their listings are taken over, not rebuilt.
        assert out["dirs_reused"] >= out["dirs"] - 8, (what, out["dirs"], out["dirs_reused"])
        if what.startswith("nothing"):
            # All but the two holding hard-linked files (the root and nested/): whose
            # entry is "the first name" depends on other directories, so those are rebuilt.
            assert out["dirs_reused"] == out["dirs"] - 2, what

    dest = tmp_path / "restored"
    file_vault.run("restore", "fetch", "c", "--to", str(dest), expect=3)  # the socket
    assert diff_r(src, dest, ignore=("socket",)) == []


def test_memo_of_another_version_is_not_used(file_vault: VaultEnv, tmp_path: Path) -> None:
    """A snapshot killed after its version record was written, before the local commit:
    the next run adopts that version from the store, and the memo rows (of the version
    before) no longer describe the latest one, so every listing is rebuilt."""
    src = file_vault.add_collection("c")
    for i in range(5):
        write(src / f"d{i}/f.txt", f"one {i}".encode())
    file_vault.run("init")
    file_vault.run("snapshot")
    write(src / "d0/f.txt", b"two")
    proc = file_vault.run(
        "snapshot", expect=None, env=file_vault.env(VAULTFS_TESTPOINTS="version-record-written=kill")
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    write(src / "d1/f.txt", b"three")
    out = file_vault.json("snapshot", expect=None)["collections"][0]
    assert out["version"] == 3
    assert out["dirs"] == 6 and out["dirs_reused"] == 0
    assert latest_root(file_vault, "c") == fresh_root(tmp_path / "fresh", src)
    again = file_vault.json("snapshot")["collections"][0]  # rows now describe version 3
    assert again["unchanged"] and again["dirs_reused"] == 6


def test_damaged_memo_row_only_costs_a_rebuild(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = file_vault.add_collection("c")
    for i in range(4):
        write(src / f"d{i}/f.txt", f"x {i}".encode())
    file_vault.run("init")
    file_vault.run("snapshot")
    vault = file_vault.open_vault()
    try:
        with vault.catalog.env.begin(write=True) as txn:
            txn.put(b"c\x01d1", b"\x00garbage", db=vault.catalog.db["files"])
    finally:
        vault.close()
    write(src / "d2/f.txt", b"changed")
    out = file_vault.json("snapshot", expect=None)["collections"][0]
    assert out["dirs"] == 5 and out["dirs_reused"] == 2  # d0, d3; root, d1 and d2 rebuilt
    assert latest_root(file_vault, "c") == fresh_root(tmp_path / "fresh", src)
