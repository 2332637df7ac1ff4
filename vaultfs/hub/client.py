"""The intake side of a hub snapshot, and restores from the hub (docs/hub.md).

The client scans its collection (`vaultfs.source.Scanner`, with the collection's rules),
finds each file's SHA-256 in its own files cache (``<state_dir>/hub-files.lmdb``: the
catalog package's files-cache rows, keyed by path, holding (dev, inode, size, mtime,
ctime) → content) or reads and hashes it, and encodes the listings bottom-up as the vault
side would (`model.encode_tree`). Then, hashes first: it sends the root's id; the hub asks
for the listings it lacks, level by level, then for the contents it lacks, and only those
are read again and sent. A no-change snapshot sends the root's digest and nothing else.

It needs neither the vault's catalog nor a store: ssh (or ``[hub] ssh_command``) is a
subprocess, and the frames (`protocol`) go over its stdin and stdout.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from vaultfs import testpoints
from vaultfs.catalog import Catalog, FileCacheRow
from vaultfs.config import CollectionConfig, Config, HubSettings
from vaultfs.errors import CorruptionError, VaultError
from vaultfs.extract import RestoreProgress, Restorer, RestoreResult, parse_selection
from vaultfs.hub.protocol import (
    DATA_CHUNK,
    PROTOCOL,
    Channel,
    Disconnected,
    Frame,
    ProtocolError,
    digests,
    remote_error,
)
from vaultfs.ignore import Rules
from vaultfs.model import BlobId, Entry, RootMeta, TreeId, VersionInfo, decode_tree, encode_tree, tree_id
from vaultfs.snapshot import SMALL_FILE, NoProgress, Progress, check_root, source_root_meta
from vaultfs.source import (
    READ_CHUNK,
    ChangedWhileReading,
    FileStat,
    NotRegularFile,
    Problem,
    ScannedDir,
    ScannedFile,
    Scanner,
    data_map,
    dir_entry,
    file_entry,
    has_holes,
    hash_extents,
    hash_stream,
    open_source,
    read_extents_into,
    read_small,
    same_file_state,
)
from vaultfs.sparse import data_size

FILES_CACHE = "hub-files.lmdb"


class Hub:
    """A session with the hub: the ssh command as a subprocess, frames over its pipes."""

    def __init__(self, settings: HubSettings) -> None:
        argv = settings.ssh_argv()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as e:
            raise VaultError(f"cannot run {argv[0]} to reach the hub {settings.url}: {e.strerror}") from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.channel = Channel(self.proc.stdout, self.proc.stdin)
        self.url = settings.url
        try:
            self.send("hello", protocol=PROTOCOL)
            self.expect("welcome")
        except BaseException:
            self.close()  # ssh is not left behind
            raise

    def __enter__(self) -> Hub:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self.send("bye")
        finally:
            self.close()

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self.proc.wait()

    def send(self, op: str, payload: bytes = b"", **header: Any) -> None:
        try:
            self.channel.send(op, payload, **header)
        except (BrokenPipeError, ConnectionResetError):
            raise self._gone() from None

    def expect(self, *ops: str) -> Frame:
        """The next frame of one of `ops`; notes are printed on the way (``note``)."""
        while True:
            try:
                frame = self.channel.expect("note", *ops)
            except Disconnected:
                raise self._gone() from None
            if frame.op != "note":
                return frame
            print(f"vaultfs: hub: {frame.header.get('message')}", file=sys.stderr, flush=True)

    def _gone(self) -> VaultError:
        """The hub went away: its last word (an ``error`` frame) if it left one."""
        try:
            while True:
                frame = self.channel.read()
                if frame.op == "error":
                    return remote_error(frame)
        except (ProtocolError, OSError, ValueError):
            pass
        return VaultError(
            f"the hub {self.url} closed the connection (see the lines above); nothing was "
            "committed by the step that failed: run the command again"
        )


# ---- snapshot ---------------------------------------------------------------------------


@dataclass(slots=True)
class Intake:
    """One collection scanned and hashed, ready for the hub."""

    root: TreeId
    root_meta: RootMeta
    trees: dict[TreeId, bytes] = field(default_factory=dict)
    contents: dict[BlobId, ScannedFile] = field(default_factory=dict)  # a file that holds each
    problems: list[Problem] = field(default_factory=list)
    not_kept: dict[str, int] = field(default_factory=dict)
    files_read: int = 0
    bytes_read: int = 0


def scan(config: Config, collection: CollectionConfig, progress: Progress | None = None) -> Intake:
    """Scan the collection, hash what the files cache does not vouch for, encode the trees."""
    progress = progress or NoProgress()
    check_root(collection)
    root = os.fsencode(collection.path)
    rules = Rules(collection, config.git_excludes_default)
    scanner = Scanner(root, None, rules)
    progress.stage("scanning")
    top = scanner.scan()
    catalog = _files_cache(config)
    try:
        hasher = _Hasher(root, scanner.problems)
        with catalog.files_reader(collection.name) as cache:
            rows = [(f, cache.get(f.rel)) for f in scanner.files if f.link_of is None]
            to_hash = [f for f, row in rows if not _vouched(f, row)]
            cached = {f.rel for f, row in rows if row is not None and _vouched(f, row)}
            progress.reading(len(to_hash), sum(f.st.st_size for f in to_hash))
            for f, row in rows:
                hasher.blob_of(f, row)
                if f.needs_read:
                    progress.advance(1, f.st.st_size)
        for f in scanner.files:
            if f.link_of is not None:
                f.blob, f.sparse, f.skipped = f.link_of.blob, f.link_of.sparse, f.link_of.skipped
        _save_files_cache(catalog, collection.name, scanner.files, cached)
    finally:
        catalog.close()
    intake = Intake(TreeId(b""), source_root_meta(root, top))
    intake.root = _build(top, intake, _Names())
    intake.problems = scanner.problems
    intake.not_kept = dict(sorted(scanner.not_kept.items()))
    intake.files_read, intake.bytes_read = hasher.files_read, hasher.bytes_read
    return intake


def _files_cache(config: Config) -> Catalog:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Catalog(config.state_dir / FILES_CACHE)


def _save_files_cache(
    catalog: Catalog, collection: str, files: list[ScannedFile], cached: set[bytes]
) -> None:
    """Rows for every file hashed (those whose row vouched for them, `cached`, stay as they
    are: a no-change snapshot writes nothing); rows of paths gone are dropped."""
    seen = set()
    with catalog.writer() as w:
        for f in files:
            if f.link_of is None and f.blob is not None and not f.skipped:
                seen.add(f.rel)
                if f.rel in cached:
                    continue
                st = f.st
                row = FileCacheRow(
                    st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, f.blob, f.sparse
                )
                w.put_file(collection, f.rel, row)
        for rel in list(catalog.file_paths(collection)):
            if rel not in seen:
                w.delete_file(collection, rel)


def _vouched(f: ScannedFile, row: FileCacheRow | None) -> bool:
    """Whether the files cache vouches for a file's content: same path, device, inode,
    size, mtime and ctime as when it was hashed."""
    st = f.st
    return row is not None and (row.dev, row.ino, row.size, row.mtime_ns, row.ctime_ns) == (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


class _Hasher:
    """Gives each scanned file its blob: from its files-cache row when the stat data
    match, else read and hashed (a sparse file's data extents only)."""

    def __init__(self, root: bytes, problems: list[Problem]) -> None:
        self.root, self.problems = root, problems
        self.files_read = self.bytes_read = 0

    def blob_of(self, f: ScannedFile, row: FileCacheRow | None) -> None:
        if _vouched(f, row):
            assert row is not None
            f.blob, f.sparse, f.needs_read = row.blob, row.sparse, False
            return
        st = f.st
        try:
            fd, before = open_source(self.root + b"/" + f.rel)
        except NotRegularFile as e:
            return self._skip(f, e.reason)
        except FileNotFoundError:
            return self._skip(f, "vanished before it could be read")
        except OSError as e:
            return self._skip(f, f"cannot read ({e.strerror})")
        try:
            if (before.st_ino, before.st_dev) != (st.st_ino, st.st_dev):
                self._skip(f, "was replaced during the snapshot")
                return
            f.sparse = data_map(fd, before.st_size) if has_holes(before) else None
            if f.sparse is not None:
                f.blob = hash_extents(fd, before, f.sparse)
            elif before.st_size <= SMALL_FILE:
                f.blob = read_small(fd, before)[1]
            else:
                f.blob = hash_stream(fd, before)
        except ChangedWhileReading:
            self._skip(f, "changed while it was read; back it up again when it is quiet")
            return
        except OSError as e:
            self._skip(f, f"cannot read ({e.strerror})")
            return
        finally:
            os.close(fd)
        self.files_read += 1
        self.bytes_read += before.st_size if f.sparse is None else data_size(f.sparse)

    def _skip(self, f: ScannedFile, reason: str) -> None:
        f.skipped = True
        self.problems.append(Problem(f.rel, reason))


class _Names:
    """User and group names of ids, each looked up once (a client's entries carry them:
    its files may come back on another machine, whose ids differ)."""

    def __init__(self) -> None:
        self.users: dict[int, str | None] = {}
        self.groups: dict[int, str | None] = {}

    def of(self, st: FileStat | os.stat_result) -> tuple[str | None, str | None]:
        """(user name, group name) of a scanned entry's owners."""
        uid, gid = st.st_uid, st.st_gid
        if uid not in self.users:
            self.users[uid] = _lookup(lambda: pwd.getpwuid(uid).pw_name)
        if gid not in self.groups:
            self.groups[gid] = _lookup(lambda: grp.getgrgid(gid).gr_name)
        return self.users[uid], self.groups[gid]

    def of_entry(self, e: Entry) -> Entry:
        """`e` (a symlink or special file, made by the scan) with its owners' names."""
        if e.uid not in self.users:
            self.users[e.uid] = _lookup(lambda: pwd.getpwuid(e.uid).pw_name)
        if e.gid not in self.groups:
            self.groups[e.gid] = _lookup(lambda: grp.getgrgid(e.gid).gr_name)
        return replace(e, uname=self.users[e.uid], gname=self.groups[e.gid])


def _lookup(name: Callable[[], str]) -> str | None:
    try:
        return name()
    except KeyError:  # an id without a name here: kept by number only
        return None


def _build(node: ScannedDir, intake: Intake, names: _Names) -> TreeId:
    """A directory's listing, bottom-up, encoded as the vault encodes it (with the owners'
    names); every listing and a file holding each content are kept for the hub's questions."""
    entries: list[Entry] = []
    for child in node.children:
        if isinstance(child, ScannedDir):
            if not child.unreadable:
                entries.append(dir_entry(child, _build(child, intake, names), *names.of(child.st)))
        elif isinstance(child, ScannedFile):
            if not child.skipped and child.blob is not None:
                entries.append(file_entry(child, *names.of(child.st)))
                intake.contents.setdefault(child.blob, child.link_of or child)
        else:
            entries.append(names.of_entry(child))
    encoded = encode_tree(entries)
    tid = tree_id(encoded)
    intake.trees[tid] = encoded
    return tid


def send_snapshot(
    hub: Hub, collection: CollectionConfig, root: bytes, intake: Intake, progress: Progress | None = None
) -> dict[str, Any]:
    """Hashes first: the root, then the listings and the contents the hub asks for. Returns
    the hub's ``done`` (what it committed)."""
    progress = progress or NoProgress()
    progress.stage("sending")
    hub.send(
        "snapshot",
        collection=collection.name,
        tier=collection.tier,
        root=intake.root.hex(),
        root_meta=intake.root_meta.to_json(),
    )
    sent = 0
    while True:
        frame = hub.expect("want-trees", "want-blobs", "done")
        if frame.op == "done":
            return {**frame.header, "contents_sent": sent}
        wanted = digests(frame.payload)
        if frame.op == "want-blobs":
            files = [intake.contents.get(BlobId(d)) for d in wanted]
            progress.reading(len(wanted), sum(f.st.st_size for f in files if f is not None))
        for digest in wanted:
            if frame.op == "want-trees":
                tree = intake.trees.get(TreeId(digest))
                if tree is None:
                    raise ProtocolError(
                        f"the hub asked for listing {digest.hex()[:16]}, which this snapshot has not"
                    )
                hub.send("tree", tree)
            else:
                f = intake.contents.get(BlobId(digest))
                if f is None:
                    raise ProtocolError(
                        f"the hub asked for content {digest.hex()[:16]}, which this snapshot has not"
                    )
                _send_content(hub, root, f, BlobId(digest))
                progress.advance(1, f.st.st_size)
                sent += 1
                testpoints.reach("hub-content-sent")


def _send_content(hub: Hub, root: bytes, f: ScannedFile, blob: BlobId) -> None:
    """One content: ``blob``, its bytes in ``data`` frames, ``blob-end`` saying whether
    they are still what was hashed (a file that changed since is not what the tree says)."""
    hub.send("blob", id=blob.hex())
    ok = False
    try:
        fd, before = open_source(root + b"/" + f.rel)
    except (OSError, NotRegularFile):
        hub.send("blob-end", ok=False)
        return
    try:
        ok = same_file_state(f.st, before) and _stream(hub, fd, before, f, blob)
    except (OSError, ChangedWhileReading):
        ok = False
    finally:
        os.close(fd)
    hub.send("blob-end", ok=ok)


def _stream(hub: Hub, fd: int, before: os.stat_result, f: ScannedFile, blob: BlobId) -> bool:
    h = hashlib.sha256()
    size = before.st_size if f.sparse is None else data_size(f.sparse)
    read = read_extents_into(fd, f.sparse) if f.sparse is not None else _plain(fd)
    buf = memoryview(bytearray(min(max(size, 1), READ_CHUNK)))
    lie = testpoints.fails("hub-lie-content")  # a test's dishonest client: other bytes, same claim
    n = 0
    while n < size:
        got = read(buf[: min(len(buf), size - n, DATA_CHUNK)], n)
        if not got:
            return False
        chunk = bytes(buf[:got])
        h.update(chunk)
        if lie and n == 0:
            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        hub.send("data", chunk)
        n += got
    return h.digest() == blob and same_file_state(before, os.fstat(fd))


def _plain(fd: int) -> Any:
    return lambda view, offset: os.preadv(fd, [view], offset)


# ---- versions and restores ----------------------------------------------------------------


class HubContents:
    """`vaultfs.extract.Contents` over a hub session: listings and contents asked for one
    at a time, each checked against its SHA-256 here (the hub is trusted no more than a store)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def tree(self, tree: TreeId) -> tuple[Entry, ...]:
        self.hub.send("get-tree", id=tree.hex())
        raw = self.hub.expect("tree").payload
        if tree_id(raw) != tree:
            raise CorruptionError(f"the hub sent listing {tree.hex()[:16]} with other bytes")
        return decode_tree(raw)

    def iter_blob(self, blob: BlobId) -> Iterator[bytes]:
        self.hub.send("get-blob", id=blob.hex())
        h = hashlib.sha256()
        held: bytes | None = None  # the last chunk is given out only once the hash matched
        while True:
            frame = self.hub.expect("data", "blob-end")
            if frame.op == "blob-end":
                break
            if held is not None:
                yield held
            h.update(frame.payload)
            held = frame.payload
        if frame.header.get("ok") is not True:
            raise CorruptionError(str(frame.header.get("message") or "the hub could not read it"))
        if h.digest() != blob:
            raise CorruptionError(f"the hub sent content {blob.hex()[:16]} with other bytes")
        if held is not None:
            yield held

    def blob_order(self, blob: BlobId) -> tuple[str, int]:
        return ("", 0)


def versions(hub: Hub, collection: str | None) -> list[dict[str, Any]]:
    if collection:
        hub.send("versions", collection=collection)
    else:
        hub.send("versions")
    try:
        docs = json.loads(hub.expect("versions").payload)
    except ValueError:
        docs = None
    if not isinstance(docs, list):
        raise ProtocolError("a versions answer that is not a list of collections")
    return docs


def fetch(
    hub: Hub,
    collection: str,
    number: int | None,
    paths: list[str],
    target: Path,
    progress: RestoreProgress | None,
    *,
    overwrite: bool,
) -> RestoreResult:
    """``restore fetch`` through the hub: the version's listings and contents from it."""
    selection = parse_selection(paths)
    hub.send("open-version", collection=collection, version=number)
    record = hub.expect("version").header.get("record")
    try:
        version = VersionInfo.from_json(record if isinstance(record, dict) else {})
    except (ValueError, KeyError, TypeError):
        raise ProtocolError("a malformed version record from the hub") from None
    return Restorer(HubContents(hub), version, target, overwrite=overwrite).run(selection, progress)
