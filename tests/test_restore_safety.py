"""`restore fetch` never writes outside its target, whatever the catalog says.

The catalog is crafted the way an attacker with write access to the store (or
a corrupted index) could: names with '..', '/', absolute paths, duplicate
names, and hard-link paths that climb out or pass through a symlink.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.catalog import Catalog
from vaultfs.model import Entry, TreeId, VersionInfo, encode_tree, tree_id


def craft_version(env: VaultEnv, entries: list[Entry]) -> int:
    """Add a version whose root tree is ``entries`` (directly in the local catalog)."""
    catalog = Catalog(env.state_dir / "catalog.lmdb")
    try:
        latest = catalog.latest_version("photos")
        assert latest is not None
        enc = encode_tree(entries)
        with catalog.writer() as w:
            w.put_tree(tree_id(enc), enc)
            w.put_version(
                VersionInfo("photos", latest.number + 1, latest.created_ns + 1, tree_id(enc), latest.bands)
            )
        return latest.number + 1
    finally:
        catalog.close()


def real_file(env: VaultEnv) -> Entry:
    """The entry of a genuine file of v1 (its blob exists in a band)."""
    catalog = Catalog(env.state_dir / "catalog.lmdb", readonly=True)
    try:
        v1 = catalog.version("photos", 1)
        assert v1 is not None
        return next(e for e in catalog.tree(v1.root) if e.name == b"good.raw")
    finally:
        catalog.close()


def sub_tree(env: VaultEnv, entries: list[Entry]) -> TreeId:
    enc = encode_tree(entries)
    catalog = Catalog(env.state_dir / "catalog.lmdb")
    try:
        with catalog.writer() as w:
            w.put_tree(tree_id(enc), enc)
    finally:
        catalog.close()
    return tree_id(enc)


@pytest.fixture
def vault_with_file(file_vault: VaultEnv) -> VaultEnv:
    src = file_vault.add_collection("photos")
    write(src / "good.raw", b"genuine content")
    file_vault.run("init")
    file_vault.run("snapshot")
    return file_vault


@pytest.mark.parametrize("name", [b"..", b".", b"/etc/evil", b"a/../../evil", b"../evil", b"", b"nul\0byte"])
def test_unsafe_names_are_refused(vault_with_file: VaultEnv, tmp_path: Path, name: bytes) -> None:
    env = vault_with_file
    good = real_file(env)
    inner = sub_tree(env, [Entry(name=b"evil", kind="file", blob=good.blob, size=good.size)])
    n = craft_version(
        env,
        [
            Entry(name=name, kind="dir", tree=inner, mode=0o755),
            Entry(name=b"x", kind="file", blob=good.blob, size=good.size),
        ],
    )
    target = tmp_path / "deep" / "target"
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = env.run("restore", "fetch", f"photos@v{n}", "--to", str(target), expect=1)
    assert "refusing unsafe name" in proc.stderr
    assert "Traceback" not in proc.stderr
    created = sorted(set(tmp_path.rglob("*")) - set(before))
    assert all(p == target or target in p.parents or p == target.parent for p in created)
    assert not list(tmp_path.rglob("evil"))
    assert not Path("/etc/evil").exists()


def test_duplicate_names_are_refused(vault_with_file: VaultEnv, tmp_path: Path) -> None:
    env = vault_with_file
    good = real_file(env)
    n = craft_version(
        env,
        [
            Entry(name=b"twice", kind="symlink", target=str(tmp_path / "outside").encode(), size=1),
            Entry(name=b"twice", kind="file", blob=good.blob, size=good.size),
        ],
    )
    proc = env.run("restore", "fetch", f"photos@v{n}", "--to", str(tmp_path / "t"), expect=1)
    assert "lists b'twice' twice" in proc.stderr
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize(("link", "code"), [(b"door/secret", 0), (b"../outside/secret", 1)])
def test_hardlink_paths_cannot_climb_or_follow_symlinks(
    vault_with_file: VaultEnv, tmp_path: Path, link: bytes, code: int
) -> None:
    env = vault_with_file
    good = real_file(env)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write(outside / "secret", b"not yours")
    n = craft_version(
        env,
        [
            Entry(name=b"door", kind="symlink", target=str(outside).encode(), size=1),
            Entry(name=b"linked", kind="file", blob=good.blob, size=good.size, hardlink=link, nlink=2),
        ],
    )
    target = tmp_path / "t"
    proc = env.run("restore", "fetch", f"photos@v{n}", "--to", str(target), expect=code)
    assert "Traceback" not in proc.stderr
    assert secret.read_bytes() == b"not yours" and os.stat(secret).st_nlink == 1
    if code == 0:  # the link is not followed: the content comes from the band instead
        assert (target / "linked").read_bytes() == b"genuine content"
        assert os.stat(target / "linked").st_ino != os.stat(secret).st_ino
    else:
        assert "refusing unsafe name b'..'" in proc.stderr
