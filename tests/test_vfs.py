"""Handler-level tests of vaultfs.mount.view (and fuse_ops's edge) without a kernel."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pyfuse3
import pytest
import trio

from tests.trees import make_every_kind, write
from tests.vaultenv import VaultEnv
from vaultfs.catalog import Catalog
from vaultfs.config import load_config
from vaultfs.errors import CorruptionError
from vaultfs.model import KIND_BITS, BandId, BlobId, decode_tree
from vaultfs.mount import view as vfs
from vaultfs.mount.fuse_ops import VaultOperations
from vaultfs.vault import Vault

MiB = 1024 * 1024


def open_view(env: VaultEnv) -> tuple[Vault, vfs.VaultView]:
    vault = Vault.open(load_config(env.config_path), readonly=True)
    return vault, vfs.VaultView(vault)


@pytest.fixture
def every_kind(file_vault: VaultEnv) -> Iterator[tuple[VaultEnv, Path, vfs.VaultView]]:
    src = file_vault.add_collection("photos")
    make_every_kind(src)
    file_vault.run("init")
    file_vault.run("snapshot")
    vault, view = open_view(file_vault)
    yield file_vault, src, view
    vault.close()


def walk(view: vfs.VaultView, ino: int, *names: bytes) -> vfs.Node:
    node = view.node(ino)
    for name in names:
        node = view.lookup(node.ino, name)
        view.remember(node)
    return node


def test_layout(every_kind: tuple[VaultEnv, Path, vfs.VaultView]) -> None:
    _, src, view = every_kind
    root = [name for name, _, _ in view.children(vfs.ROOT_INO)]
    assert sorted(root) == [b".vaultfs", b"photos"]
    coll = walk(view, vfs.ROOT_INO, b"photos")
    assert sorted(n for n, _, _ in view.children(coll.ino)) == [b"latest", b"v1"]
    latest = walk(view, coll.ino, b"latest")
    assert view.readlink(latest.ino) == b"v1"
    assert stat.S_ISLNK(view.attr(latest).mode)
    v1 = walk(view, coll.ino, b"v1")
    src_root = os.stat(src)  # the version directory is the source root as snapshotted
    a = view.attr(v1)
    assert (a.mode, a.uid, a.gid, a.mtime_ns) == (
        stat.S_IFDIR | stat.S_IMODE(src_root.st_mode),
        src_root.st_uid,
        src_root.st_gid,
        src_root.st_mtime_ns,
    )
    for bad in (b"v0", b"v2", b"v01", b"x", b"latest2"):
        with pytest.raises(vfs.NotFound):
            view.lookup(coll.ino, bad)
    with pytest.raises(vfs.NotFound):
        view.lookup(vfs.ROOT_INO, b"nosuch")
    status = walk(view, vfs.ROOT_INO, b".vaultfs", b"status")
    text = view.open(status.ino).read(0, 1 << 20)
    assert b"photos: 1 version(s), latest v1" in text
    assert view.attr(status).size == len(text)


def test_attrs_are_the_sources(every_kind: tuple[VaultEnv, Path, vfs.VaultView]) -> None:
    _, src, view = every_kind
    v1 = walk(view, vfs.ROOT_INO, b"photos", b"v1")
    for name in (
        "plain.txt",
        "owned",
        "secret",
        "setuid_tool",
        "sticky",
        "link_rel",
        "fifo",
        "null_dev",
        "hard_a",
    ):
        st = os.lstat(src / name)
        a = view.attr(walk(view, v1.ino, name.encode()))
        assert (a.mode, a.uid, a.gid, a.mtime_ns, a.rdev) == (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            st.st_rdev,
        ), name
        if not stat.S_ISDIR(st.st_mode):
            assert (a.size, a.nlink) == (st.st_size, st.st_nlink), name
    photos = walk(view, v1.ino, b"photos")
    assert view.attr(photos).nlink == os.stat(src / "photos").st_nlink
    link = walk(view, v1.ino, b"link_dangling")
    assert view.readlink(link.ino) == b"does/not/exist"
    with pytest.raises(vfs.NotASymlink):
        view.readlink(photos.ino)
    with pytest.raises(vfs.NotADirectory):
        view.lookup(walk(view, v1.ino, b"plain.txt").ino, b"x")


def test_inodes_are_stable_and_hard_links_share_one(every_kind: tuple[VaultEnv, Path, vfs.VaultView]) -> None:
    _, _, view = every_kind
    v1 = walk(view, vfs.ROOT_INO, b"photos", b"v1")
    paths = [(b"plain.txt",), (b"hard_a",), (b"hard_c",), (b"nested", b"hard_b"), (b"photos", b"2019")]
    first = {p: walk(view, v1.ino, *p).ino for p in paths}
    assert first[(b"hard_a",)] == first[(b"hard_c",)] == first[(b"nested", b"hard_b")]
    assert len(set(first.values())) == 3
    other = vfs.VaultView(view.vault)  # a fresh node table, as after a remount
    v1b = walk(other, vfs.ROOT_INO, b"photos", b"v1")
    assert v1b.ino == v1.ino
    assert {p: walk(other, v1b.ino, *p).ino for p in paths} == first


def test_readdir_offsets_resume_exactly(every_kind: tuple[VaultEnv, Path, vfs.VaultView]) -> None:
    _, src, view = every_kind
    v1 = walk(view, vfs.ROOT_INO, b"photos", b"v1")
    full = list(view.children(v1.ino))
    assert sorted(n for n, _, _ in full) == sorted(os.listdir(os.fsencode(src)))
    for k in range(len(full)):
        offset = full[k - 1][2] if k else 0
        assert [n for n, _, _ in view.children(v1.ino, offset)] == [n for n, _, _ in full[k:]]
    root = list(view.children(vfs.ROOT_INO))
    assert list(view.children(vfs.ROOT_INO, root[0][2])) == root[1:]


def test_reads_ranges_and_xattrs(every_kind: tuple[VaultEnv, Path, vfs.VaultView]) -> None:
    _, src, view = every_kind
    node = walk(view, vfs.ROOT_INO, b"photos", b"v1", b"photos", b"2019", b"img_0001.raw")
    content = (src / "photos" / "2019" / "img_0001.raw").read_bytes()
    handle = view.open(node.ino)
    for off, size in ((0, 1), (0, 4096), (1000, 70_000), (len(content) - 10, 100), (len(content), 10)):
        assert handle.read(off, size) == content[off : off + size]
    names = view.xattr_names(node.ino)
    assert {b"user.vaultfs.state", b"user.vaultfs.sha256", b"user.vaultfs.band"} <= set(names)
    assert view.xattr(node.ino, b"user.vaultfs.state") == b"available"
    plain = walk(view, vfs.ROOT_INO, b"photos", b"v1", b"plain.txt")
    assert view.xattr(plain.ino, b"user.comment") == b"a note"
    with pytest.raises(vfs.NoAttribute):
        view.xattr(plain.ino, b"user.nosuch")
    empty = walk(view, vfs.ROOT_INO, b"photos", b"v1", b"empty")
    assert view.open(empty.ino).read(0, 10) == b""


def test_a_new_version_is_seen_without_reopening(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("docs", tier="warm")
    write(src / "a.txt", b"one\n")
    file_vault.run("init")
    file_vault.run("snapshot")
    vault, view = open_view(file_vault)
    try:
        coll = walk(view, vfs.ROOT_INO, b"docs")
        assert [n for n, _, _ in view.children(coll.ino)] != []
        with pytest.raises(vfs.NotFound):
            view.lookup(coll.ino, b"v2")
        write(src / "b.txt", b"two\n")
        file_vault.run("snapshot")
        v2 = walk(view, coll.ino, b"v2")
        assert b"b.txt" in [n for n, _, _ in view.children(v2.ino)]
        assert view.readlink(walk(view, coll.ino, b"latest").ino) == b"v2"
        assert view.attr(coll).nlink == 4
    finally:
        vault.close()


def test_forget_drops_nodes_the_kernel_released(every_kind: tuple[VaultEnv, Path, vfs.VaultView]) -> None:
    _, _, view = every_kind
    before = view.inode_count
    node = walk(view, vfs.ROOT_INO, b"photos")
    view.remember(node)
    assert view.inode_count == before + 1
    view.forget(node.ino, 1)
    assert view.node(node.ino) is node
    view.forget(node.ino, 1)
    with pytest.raises(vfs.NotFound):
        view.node(node.ino)
    view.forget(vfs.ROOT_INO, 5)
    assert view.node(vfs.ROOT_INO).kind == "root"


def big_vault(env: VaultEnv) -> tuple[bytes, bytes]:
    src = env.add_collection("photos")
    a, b = os.urandom(500_000), os.urandom(500_000)
    write(src / "a.raw", a)
    write(src / "b.raw", b)
    env.run("init")
    env.run("snapshot")
    return a, b


def test_a_corrupt_band_raises_and_names_the_band(file_vault: VaultEnv) -> None:
    big_vault(file_vault)
    store = Path(file_vault.store_url.removeprefix("file://"))
    band = max(store.glob("bands/*.tar.zst"), key=lambda p: p.stat().st_size)
    data = bytearray(band.read_bytes())
    data[300_000] ^= 1
    band.write_bytes(bytes(data))
    vault, view = open_view(file_vault)
    try:
        node = walk(view, vfs.ROOT_INO, b"photos", b"v1", b"a.raw")
        with pytest.raises(CorruptionError, match=band.name.removesuffix(".tar.zst")):
            view.open(node.ino).read(0, 1 << 20)
    finally:
        vault.close()


def point_blob_at(env: VaultEnv, content: bytes, other: bytes) -> None:
    """Corrupt the local catalog: the blob of `content` now points at `other`'s bytes
    (frames intact, so only the whole-file SHA-256 can tell)."""
    cat = Catalog(env.state_dir / "catalog.lmdb")
    try:
        ref = cat.blob(BlobId(hashlib.sha256(other).digest()))
        assert ref is not None
        with cat.writer() as w:
            w.put_blob(BlobId(hashlib.sha256(content).digest()), ref)
    finally:
        cat.close()


def test_sequential_read_checks_the_sha256(file_vault: VaultEnv) -> None:
    """Frames intact but the catalog points a.raw at b.raw's bytes: the last read fails."""
    a, b = big_vault(file_vault)
    point_blob_at(file_vault, a, b)
    vault, view = open_view(file_vault)
    try:
        handle = view.open(walk(view, vfs.ROOT_INO, b"photos", b"v1", b"a.raw").ino)
        assert handle.read(0, 400_000) == b[:400_000]  # no frame error: the bytes are b's
        with pytest.raises(CorruptionError, match="fails SHA-256"):
            handle.read(400_000, 1 << 20)
    finally:
        vault.close()


def test_an_archived_band_gives_archived(file_vault: VaultEnv) -> None:
    big_vault(file_vault)
    cat = Catalog(file_vault.state_dir / "catalog.lmdb")
    infos = list(cat.bands())
    with cat.writer() as w:
        for info in infos:
            w.put_band(dataclasses.replace(info, storage_class="DEEP_ARCHIVE", state="archived"))
    cat.close()
    vault, view = open_view(file_vault)
    try:
        node = walk(view, vfs.ROOT_INO, b"photos", b"v1", b"a.raw")
        assert view.xattr(node.ino, b"user.vaultfs.state") == b"archived"
        with pytest.raises(vfs.Archived):
            view.open(node.ino)
        assert b"archived: " in view.status_text()
    finally:
        vault.close()


# ---- fuse_ops: the edge ------------------------------------------------------------------


def test_write_handlers_answer_erofs(every_kind: tuple[VaultEnv, Path, vfs.VaultView]) -> None:
    _, _, view = every_kind
    ops = VaultOperations(view, trio.CapacityLimiter(1))
    calls = [
        (ops.mkdir, (1, b"x", 0o755, None)),
        (ops.unlink, (1, b"x", None)),
        (ops.rmdir, (1, b"x", None)),
        (ops.rename, (1, b"a", 1, b"b", 0, None)),
        (ops.create, (1, b"x", 0o644, os.O_WRONLY, None)),
        (ops.write, (1, 0, b"x")),
        (ops.setattr, (1, None, None, None, None)),
        (ops.setxattr, (1, b"user.x", b"1", None)),
        (ops.removexattr, (1, b"user.x", None)),
        (ops.symlink, (1, b"l", b"t", None)),
        (ops.link, (1, 1, b"l", None)),
        (ops.mknod, (1, b"n", 0o644, 0, None)),
    ]
    for fn, args in calls:
        with pytest.raises(pyfuse3.FUSEError) as info:
            trio.run(cast(Any, fn), *args)
        assert info.value.errno == errno.EROFS, fn.__name__
    node = walk(view, vfs.ROOT_INO, b"photos", b"v1", b"plain.txt")
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(ops.open, node.ino, os.O_RDWR, None)
    assert info.value.errno == errno.EROFS


def test_an_unexpected_exception_becomes_eio(
    every_kind: tuple[VaultEnv, Path, vfs.VaultView],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, view = every_kind
    ops = VaultOperations(view, trio.CapacityLimiter(1))

    def boom(node: vfs.Node) -> vfs.Attr:
        raise RuntimeError("boom")

    monkeypatch.setattr(view, "attr", boom)
    with caplog.at_level(logging.ERROR, "vaultfs.mount"), pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(ops.getattr, vfs.ROOT_INO, None)
    assert info.value.errno == errno.EIO
    assert "unexpected error in getattr" in caplog.text and "boom" in caplog.text
    monkeypatch.undo()
    assert trio.run(ops.getattr, vfs.ROOT_INO, None).st_ino == vfs.ROOT_INO
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(ops.lookup, vfs.ROOT_INO, b"nosuch", None)
    assert info.value.errno == errno.ENOENT
    ops.view.readers.vault.catalog.band(BandId("nosuch"))  # the catalog still answers


def read_like_the_mount(handle: vfs.OpenFile, size: int) -> tuple[bytes, int]:
    """Sequential 1 MiB reads as fuse_ops serves them: `peek` first, else `read_view`."""
    out, peeked = bytearray(), 0
    for off in range(0, size, 1 << 20):
        data: bytes | memoryview | None = handle.peek(off, 1 << 20)
        if data is not None:
            peeked += 1
        else:
            data = handle.read_view(off, 1 << 20)
        out += data
    return bytes(out), peeked


def test_streamed_reads_peek_cached_frames_and_still_check_the_sha256(file_vault: VaultEnv) -> None:
    """Reads of a frame already decompressed are answered without waiting (`peek`),
    the hash runs behind them, and the read that ends the file still waits for it:
    with the catalog pointing d.raw at c.raw's bytes, that read fails."""
    src = file_vault.add_collection("photos")
    c, d = os.urandom(20 * MiB + 17), os.urandom(20 * MiB + 17)  # streamed: 4 MiB frames
    write(src / "c.raw", c)
    write(src / "d.raw", d)
    file_vault.run("init")
    file_vault.run("snapshot")
    vault, view = open_view(file_vault)
    try:
        handle = view.open(walk(view, vfs.ROOT_INO, b"photos", b"v1", b"c.raw").ino)
        assert isinstance(handle, vfs.OpenFile)
        assert handle.peek(0, MiB) is None  # nothing decompressed yet: never waits
        assert handle.peek(len(c) - 17, 17) is None  # the last read waits for the hash
        data, peeked = read_like_the_mount(handle, len(c))
        assert data == c
        assert peeked >= 3  # at least the rest of the first frame came from the cache
    finally:
        vault.close()
    point_blob_at(file_vault, d, c)
    vault, view = open_view(file_vault)
    try:
        handle = view.open(walk(view, vfs.ROOT_INO, b"photos", b"v1", b"d.raw").ino)
        assert isinstance(handle, vfs.OpenFile)
        with pytest.raises(CorruptionError, match="fails SHA-256"):
            read_like_the_mount(handle, len(d))
    finally:
        vault.close()


# ---- prepared version directories ---------------------------------------------------------


def prepared_as_the_tree_says(
    view: vfs.VaultView, collection: str, number: int
) -> dict[bytes, tuple[object, ...]]:
    """Walk every directory of a version through the view's prepared tables (readdirplus's
    `replies` and lookup's `lookup_reply`) and check each entry against the tree as the
    catalog decodes it. Returns path → (inode, attributes), to compare views with."""
    version = view.catalog.version(collection, number)
    assert version is not None
    top = walk(view, vfs.ROOT_INO, collection.encode(), f"v{number}".encode())
    seen: dict[bytes, tuple[object, ...]] = {}
    todo = [(top, version.root)]
    while todo:
        directory, tree = todo.pop()
        raw = view.catalog.tree_bytes(tree)
        assert raw is not None
        entries = decode_tree(raw)
        answered = list(view.replies(directory.ino))
        assert [name for name, _, _, _ in answered] == [e.name for e in entries]
        for (name, node, reply, offset), e in zip(answered, entries, strict=True):
            path = name if not directory.path else directory.path + b"/" + name
            identity = e.hardlink if e.hardlink is not None else path
            assert node.ino == vfs.inode_number("entry", collection, number, identity), path
            assert node.entry is not None  # a hard link's node is its group's: one inode
            same = dataclasses.replace(node.entry, name=e.name, hardlink=e.hardlink)
            assert same == e, path  # every other field: target, xattrs, blob, sparse map …
            subdirs = 0
            if e.tree is not None:
                child = view.catalog.tree_bytes(e.tree)
                assert child is not None
                subdirs = sum(1 for c in decode_tree(child) if c.kind == "dir")
            nlink = 2 + subdirs if e.kind == "dir" else max(1, e.nlink) if e.kind == "file" else 1
            assert (reply.mode, reply.uid, reply.gid, reply.mtime_ns, reply.rdev, reply.nlink) == (
                KIND_BITS[e.kind] | e.mode,
                e.uid,
                e.gid,
                e.mtime_ns,
                e.rdev,
                nlink,
            ), path
            assert reply.size == (e.size if e.kind in ("file", "symlink") else 0), path
            assert reply.timeout == vfs.IMMUTABLE_TIMEOUT  # versions never change
            assert view.lookup_reply(directory.ino, name) == (node, reply)
            assert next(iter(view.replies(directory.ino, offset - 1)))[1] is node  # offsets resume
            view.remember(node)
            seen[path] = (node.ino, reply)
            if e.tree is not None:
                todo.append((node, e.tree))
        with pytest.raises(vfs.NotFound):
            view.lookup_reply(directory.ino, b"no such name")
        assert view.caches_misses(directory.ino)
    return seen


def test_prepared_directories_answer_what_the_trees_say(file_vault: VaultEnv) -> None:
    """Every kind of entry, odd names, xattrs; then a version committed while the view is
    open, and a view over a rebuilt catalog: same answers, same inode numbers."""
    src = file_vault.add_collection("photos")
    make_every_kind(src)
    file_vault.run("init")
    file_vault.run("snapshot")
    vault, view = open_view(file_vault)
    try:
        v1 = prepared_as_the_tree_says(view, "photos", 1)
        assert {b"fifo", b"socket", b"null_dev", b"link_dangling", b"nested/hard_b"} <= set(v1)
        write(src / "plain.txt", b"changed\n")
        write(src / "nested" / "deeper" / "new.txt", b"new\n")
        file_vault.run("snapshot", expect=3)  # cold: a modified file is warned about
        v2 = prepared_as_the_tree_says(view, "photos", 2)
        assert b"nested/deeper/new.txt" in v2 and b"nested/deeper/new.txt" not in v1
        assert prepared_as_the_tree_says(view, "photos", 1) == v1  # unchanged by the commit
        coll = walk(view, vfs.ROOT_INO, b"photos")
        assert not view.caches_misses(coll.ino) and not view.caches_misses(vfs.ROOT_INO)
    finally:
        vault.close()
    file_vault.run("index", "rebuild")
    vault, view = open_view(file_vault)
    try:
        assert prepared_as_the_tree_says(view, "photos", 1) == v1
        assert prepared_as_the_tree_says(view, "photos", 2) == v2
    finally:
        vault.close()


def test_a_missing_name_inside_a_version_is_cached_by_the_kernel(
    every_kind: tuple[VaultEnv, Path, vfs.VaultView],
) -> None:
    """Inside a version a lookup miss is a negative entry (st_ino 0) for the mount's life;
    above the versions (a version may be committed any moment) it stays ENOENT."""
    _, _, view = every_kind
    ops = VaultOperations(view, trio.CapacityLimiter(1))
    v1 = walk(view, vfs.ROOT_INO, b"photos", b"v1")
    missing = trio.run(ops.lookup, v1.ino, b"nope", None)
    assert missing.st_ino == 0 and missing.entry_timeout == vfs.IMMUTABLE_TIMEOUT
    found = trio.run(ops.lookup, v1.ino, b"plain.txt", None)
    assert found.st_ino == view.lookup(v1.ino, b"plain.txt").ino and found.st_size == 1200
    made = [n for n in view.prepared(v1).nodes if n is not None]
    assert [n.path for n in made] == [b"plain.txt"]  # a lookup makes its one answer, not all
    coll = walk(view, vfs.ROOT_INO, b"photos")
    for parent, name in ((coll.ino, b"v2"), (vfs.ROOT_INO, b"nope")):
        with pytest.raises(pyfuse3.FUSEError) as info:
            trio.run(ops.lookup, parent, name, None)
        assert info.value.errno == errno.ENOENT
    assert trio.run(ops.lookup, coll.ino, b"v1", None).attr_timeout == vfs.LIVE_TIMEOUT


def test_reads_out_of_order_are_still_hashed(file_vault: VaultEnv) -> None:
    """The kernel's read-ahead may deliver reads out of order: the ones ahead are held
    until the gap is filled, the file is still verified as a whole (and fails as a whole)."""
    a, b = big_vault(file_vault)
    vault, view = open_view(file_vault)
    try:
        handle = view.open(walk(view, vfs.ROOT_INO, b"photos", b"v1", b"a.raw").ino)
        assert isinstance(handle, vfs.OpenFile)
        chunks = [(off, min(64 * 1024, len(a) - off)) for off in range(0, len(a), 64 * 1024)]
        order = [chunks[1], chunks[0], *chunks[3:], chunks[2]]  # the end arrives before chunk 2
        got = {off: handle.read(off, n) for off, n in order}
        assert b"".join(got[off] for off, _ in chunks) == a
        assert handle.verified
        handle = view.open(walk(view, vfs.ROOT_INO, b"photos", b"v1", b"a.raw").ino)
        assert isinstance(handle, vfs.OpenFile)
        handle.read(100_000, 1000)  # a jump: held, not yet verified
        assert not handle.verified
    finally:
        vault.close()
    point_blob_at(file_vault, a, b)
    vault, view = open_view(file_vault)
    try:
        handle = view.open(walk(view, vfs.ROOT_INO, b"photos", b"v1", b"a.raw").ino)
        assert isinstance(handle, vfs.OpenFile)
        chunks = [(off, min(64 * 1024, len(b) - off)) for off in range(0, len(b), 64 * 1024)]
        for off, n in chunks[1:]:
            handle.read(off, n)  # held: the hash cannot end before chunk 0
        with pytest.raises(CorruptionError, match="fails SHA-256"):
            handle.read(0, chunks[0][1])  # completes the hash
        assert not handle.verified
        with pytest.raises(CorruptionError, match="fails SHA-256"):
            handle.read(0, 4096)  # this open serves none of those bytes again
    finally:
        vault.close()
