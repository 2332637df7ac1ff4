"""The vault side of one hub client's session: ``vaultfs serve --stdio --client NAME``.

The session trusts nothing the client sends (docs/hub.md, "Protocol"):

* every name the client uses lives under ``NAME.``: its collection ``home`` is the hub's
  ``NAME.home``; a collection name with a ``.`` (another client's, or a way around the
  prefix) or one that is a local collection of the hub is refused, and logged;
* every listing is decoded, its names checked (no ``/``, ``..``, ``.``, NUL, empty or
  duplicate names), re-encoded canonically and hashed again (`TreeSaver.store`): its id
  must be the one the client claimed;
* every content's SHA-256 is recomputed while it is packed (`FileSaver.pack_received`);
  a mismatch aborts the snapshot and nothing is committed;
* a frame over the bound, a malformed one or a disconnect at any point aborts the
  snapshot the same way (`Snapshot.run`'s failure path: the band being filled is
  dropped, no version record is written). Bands already uploaded stay registered, so
  the next run resumes without the client sending their contents again;
* a restore (``get-tree``/``get-blob``) serves only listings and contents reachable from
  a version of the client's own collections that it opened in this session.

The snapshot itself is `vaultfs.snapshot.Snapshot` with another intake (`HubSnapshot`):
trees, diff, commit, spool, the band packing and the vault lock are the local ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaultfs import retention, testpoints
from vaultfs.band import ContentChanged, MemberMeta
from vaultfs.catalog import FileCacheLookup
from vaultfs.config import KEEP_RULES, CollectionConfig, check_client_name
from vaultfs.errors import EXIT_OK, EXIT_USAGE, CorruptionError, VaultError
from vaultfs.hub.protocol import (
    DATA_CHUNK,
    DIGEST,
    MAX_PAYLOAD,
    PROTOCOL,
    Channel,
    Disconnected,
    Frame,
    ProtocolError,
)
from vaultfs.model import RECORD_ERRORS, BlobId, Entry, RootMeta, TreeId, VersionInfo, decode_tree, to_text
from vaultfs.snapshot import Snapshot, SnapshotResult
from vaultfs.snapshot.files import FileSaver
from vaultfs.snapshot.trees import Memos, TreeSaver
from vaultfs.store import ObjectArchived, ObjectNotFound
from vaultfs.vault import TIER_META, Vault

log = logging.getLogger(__name__)

CLIENT_COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # no '.': the prefix is the hub's
PATHS_SENT = 20  # modified or deleted paths of a cold collection named in a snapshot's answer
LOG_FILE = "hub.log"  # in the hub's state_dir: one line per refusal and per aborted session
MAX_ID = 2**64  # sizes, times, ids: what a client may claim
MAX_OWNER_NAME = 256  # characters of a user or group name
# What decoding a record a client sent can raise (`model.RECORD_ERRORS`, and a field of the
# wrong type met by a method: a name that is a number).
MALFORMED: tuple[type[Exception], ...] = (*RECORD_ERRORS, AttributeError, RecursionError)


class Refused(VaultError):
    """The client asked for something it may not have, or sent something the hub refuses."""

    exit_code = EXIT_USAGE


Listing = Callable[[Vault, str], dict[str, Any]]  # `vaultfs versions --json` of one collection


class Session:
    """One client's session: its requests, one after another, until it says bye or goes."""

    def __init__(self, vault: Vault, client: str, channel: Channel, listing: Listing) -> None:
        self.vault, self.client, self.channel, self.listing = vault, client, channel, listing
        self.prefix = client + "."
        self.trees_allowed: set[TreeId] = set()  # reachable from a version opened for a restore
        self.blobs_allowed: set[BlobId] = set()

    def run(self) -> None:
        hello = self.channel.expect("hello")
        if hello.header.get("protocol") != PROTOCOL:
            raise Refused(f"the client speaks protocol {hello.header.get('protocol')!r}, this hub {PROTOCOL}")
        self.channel.send("welcome", protocol=PROTOCOL, client=self.client)
        handlers: dict[str, Callable[[Frame], None]] = {
            "snapshot": self.snapshot,
            "versions": self.versions,
            "open-version": self.open_version,
            "get-tree": self.get_tree,
            "get-blob": self.get_blob,
        }
        while True:
            try:
                frame = self.channel.read()
            except Disconnected:
                return  # the client finished without a bye
            if frame.op == "bye":
                return
            handler = handlers.get(frame.op)
            if handler is None:
                raise ProtocolError(f"unknown request {frame.op!r}")
            handler(frame)

    def collection(self, frame: Frame) -> str:
        """The hub's name of the client's collection named in `frame` (``NAME.home``)."""
        name: str = frame.get("collection", str)
        if not CLIENT_COLLECTION.match(name):
            raise Refused(
                f"collection {name!r} refused: a client names only its own collections "
                "(letters, digits, '_' and '-'; no '.')"
            )
        full = self.prefix + name
        if any(c.name == full for c in self.vault.config.collections):
            raise Refused(f"collection {name!r} refused: {full} is a local collection of the hub")
        return full

    # ---- snapshot ----------------------------------------------------------------------

    def snapshot(self, frame: Frame) -> None:
        name = self.collection(frame)
        tier = frame.get("tier", str)
        if tier not in ("cold", "warm"):
            raise ProtocolError(f"tier {tier!r} is not cold or warm")
        root = TreeId(_digest(frame.get("root", str), "root"))
        try:
            root_meta = RootMeta.from_json(frame.get("root_meta", dict))
        except MALFORMED:
            raise ProtocolError("a malformed root_meta") from None
        _check_numbers(root_meta.mode, root_meta.uid, root_meta.gid, abs(root_meta.mtime_ns))
        keep = self.vault.config.client_keep(name)
        # The path is never read: the client's intake replaces the scan.
        collection = CollectionConfig(
            name, Path("/"), tier, **{rule: getattr(keep, rule) for rule in KEEP_RULES}
        )
        intake = ClientIntake(self.channel, root, root_meta)
        with self.vault.lock(wait=self._say_waiting):
            self._record_tier(name, tier)
            result = HubSnapshot(self.vault, collection, intake, now=testpoints.snapshot_clock()).run()
            forgotten = [] if keep.empty else retention.forget(self.vault, {name: keep})[0].forgotten
        self.channel.send("done", **_result_json(result, self.prefix), forgotten=list(forgotten))

    def _record_tier(self, name: str, tier: str) -> None:
        """Remember the collection's tier for what runs outside a session (the upload
        class, archiving, pins). A client may make its collection cold, never warm again:
        that would lift the pins that keep the last copies of its changed files."""
        recorded = self.vault.collection_tier(name)
        if recorded == tier:
            return
        if recorded == "cold":
            raise Refused(
                f"collection {name.removeprefix(self.prefix)!r} is cold on the hub: a client cannot "
                "make it warm (ask the hub's owner)"
            )
        with self.vault.catalog.writer() as w:
            w.set_meta(TIER_META + name, tier)

    def _say_waiting(self, holder: str) -> None:
        self.channel.send(
            "note", message=f"the hub is busy ({holder}): waiting for its commit before this snapshot"
        )

    # ---- versions and restores ---------------------------------------------------------

    def versions(self, frame: Frame) -> None:
        if "collection" in frame.header:
            names = [self.collection(frame)]
        else:
            names = sorted(c for c in self.vault.catalog.collections() if c.startswith(self.prefix))
        docs = []
        for full in names:
            doc = self.listing(self.vault, full)
            doc["collection"] = full.removeprefix(self.prefix)
            docs.append(doc)
        self.channel.send("versions", json.dumps(docs).encode())  # the payload: no header bound

    def open_version(self, frame: Frame) -> None:
        full = self.collection(frame)
        number = frame.header.get("version")
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
            raise ProtocolError("a version number that is not an integer")
        version = self.vault.resolve_version(full, number)
        self.trees_allowed.add(version.root)
        record = version.to_json()
        record["collection"] = full.removeprefix(self.prefix)
        self.channel.send("version", record=record)

    def get_tree(self, frame: Frame) -> None:
        tid = TreeId(_digest(frame.get("id", str), "tree"))
        if tid not in self.trees_allowed:
            raise self._refuse(f"tree {tid.hex()[:16]} is in no version of this client opened here")
        raw = self.vault.catalog.tree_bytes(tid)
        if raw is None:
            raise CorruptionError(
                f"tree {tid.hex()[:16]} is not in the hub's catalog: run `vaultfs check` on the hub"
            )
        for e in self.vault.tree(tid):
            if e.tree is not None:
                self.trees_allowed.add(e.tree)
            if e.blob is not None:
                self.blobs_allowed.add(e.blob)
        self.channel.send("tree", raw)

    def get_blob(self, frame: Frame) -> None:
        blob = BlobId(_digest(frame.get("id", str), "blob"))
        if blob not in self.blobs_allowed:
            raise self._refuse(f"content {blob.hex()[:16]} is in no version of this client opened here")
        try:
            for chunk in self.vault.iter_blob(blob):
                for i in range(0, len(chunk), DATA_CHUNK):
                    self.channel.send("data", chunk[i : i + DATA_CHUNK])
        except (CorruptionError, ObjectNotFound, ObjectArchived) as e:
            where = " (on the hub: its owner can restore it there)" if isinstance(e, ObjectArchived) else ""
            self.channel.send("blob-end", ok=False, message=e.message + where)
            return
        self.channel.send("blob-end", ok=True)

    def _refuse(self, what: str) -> Refused:
        return Refused(f"refused: {what}")


class ClientIntake:
    """The client's side of a hub snapshot, as the vault side reads it: the root, then
    listings top-down (only those the hub lacks), then contents (only those it lacks)."""

    def __init__(self, channel: Channel, root: TreeId, root_meta: RootMeta) -> None:
        self.channel, self.root, self.root_meta = channel, root, root_meta
        self.contents_received = 0

    def receive_trees(self, trees: TreeSaver, cache: FileCacheLookup) -> dict[BlobId, tuple[bytes, Entry]]:
        """Ask for every listing under the root the vault lacks, round by round (one level
        of the tree per round trip); each is checked and stored in `trees`. Returns the
        contents the vault lacks, by blob, with the first path that holds each."""
        has_tree = trees.vault.catalog.has_tree
        pending: dict[TreeId, bytes] = {} if has_tree(self.root) else {self.root: b""}
        wanted: dict[BlobId, tuple[bytes, Entry]] = {}
        while pending:
            batch = list(pending)[: MAX_PAYLOAD // DIGEST]
            self.channel.send("want-trees", b"".join(batch))
            for tid in batch:
                where = pending.pop(tid)
                raw = self.channel.expect("tree").payload
                for e in _listing(trees, tid, raw):
                    path = where + b"/" + e.name if where else e.name
                    if e.tree is not None and e.tree not in trees.listings and not has_tree(e.tree):
                        pending.setdefault(e.tree, path)
                    elif e.blob is not None and e.blob not in wanted and not cache.has_blob(e.blob):
                        wanted[e.blob] = (path, e)
        return wanted

    def receive_contents(self, files: FileSaver, wanted: dict[BlobId, tuple[bytes, Entry]]) -> None:
        """Ask for the contents the vault lacks and pack each as it arrives, its SHA-256
        recomputed (`FileSaver.pack_received`)."""
        order = list(wanted)
        for start in range(0, len(order), MAX_PAYLOAD // DIGEST):
            batch = order[start : start + MAX_PAYLOAD // DIGEST]
            self.channel.send("want-blobs", b"".join(batch))
            for blob in batch:
                path, entry = wanted[blob]
                self._receive_one(files, blob, path, entry)
                testpoints.reach("hub-content-packed")

    def _receive_one(self, files: FileSaver, blob: BlobId, path: bytes, e: Entry) -> None:
        got = self.channel.expect("blob")
        if got.header.get("id") != blob.hex():
            raise ProtocolError(f"content {got.header.get('id')!r} sent where {blob.hex()} was asked for")
        data = _DataReader(self.channel, e.blob_size)
        meta = MemberMeta(
            mode=e.mode,
            uid=e.uid,
            gid=e.gid,
            mtime_ns=e.mtime_ns,
            uname=e.uname or "",
            gname=e.gname or "",
            xattrs=e.xattrs,
            sparse=None if e.sparse is None else (e.size, e.sparse),
        )
        shown = path.decode("utf-8", "backslashreplace")
        try:
            files.pack_received(path, meta, e.blob_size, data.read, blob)
        except ContentChanged:
            if data.remaining == 0 and not data.ended:
                data.end()
            if data.changed:
                raise VaultError(
                    f"{shown} changed on the client while it was sent: run the snapshot again"
                ) from None
            raise VaultError(
                f"the content the client sent for {shown} does not match its SHA-256: nothing was "
                "committed (a damaged or dishonest client)"
            ) from None
        if not data.ended:
            data.end()
        if data.changed:
            raise VaultError(f"{shown} changed on the client while it was sent: run the snapshot again")
        self.contents_received += 1


class _DataReader:
    """A `ReadInto` over the ``data`` frames of one content, up to its ``blob-end``."""

    def __init__(self, channel: Channel, size: int) -> None:
        self.channel, self.remaining = channel, size
        self.buffer = memoryview(b"")
        self.ended = self.changed = False

    def read(self, view: memoryview, offset: int) -> int:
        if not self.buffer:
            if self.remaining == 0 or self.ended:
                return 0
            frame = self.channel.expect("data", "blob-end")
            if frame.op == "blob-end":
                self._ended(frame)
                return 0
            if len(frame.payload) > self.remaining:
                raise ProtocolError("more content than its size")
            self.buffer = memoryview(frame.payload)
        n = min(len(view), len(self.buffer))
        view[:n] = self.buffer[:n]
        self.buffer = self.buffer[n:]
        self.remaining -= n
        return n

    def end(self) -> None:
        self._ended(self.channel.expect("blob-end"))

    def _ended(self, frame: Frame) -> None:
        self.ended = True
        self.changed = frame.header.get("ok") is not True


class HubSnapshot(Snapshot):
    """`Snapshot` whose intake is a hub client's session instead of a scan of a source."""

    def __init__(
        self, vault: Vault, collection: CollectionConfig, intake: ClientIntake, now: Callable[[], int]
    ) -> None:
        super().__init__(vault, collection, now=now)
        self.intake = intake

    def _check_source(self) -> None:
        """The source is on the client, which checked its root before it called."""

    def _gather(self, root: bytes, latest: VersionInfo | None) -> tuple[TreeId, TreeSaver]:
        self._root_meta = self.intake.root_meta
        with self.vault.catalog.files_reader(self.collection.name) as cache:
            trees = TreeSaver(self.vault, Memos(cache, latest))
            wanted = self.intake.receive_trees(trees, cache)
            self._uploader.start()
            self.intake.receive_contents(self.files, wanted)
        trees.dirs = len(trees.listings)
        if latest is None or latest.root != self.intake.root:
            trees.files, trees.size = _count(self.vault, trees, self.intake.root, {})
        return self.intake.root, trees


def _count(
    vault: Vault, trees: TreeSaver, tid: TreeId, memo: dict[TreeId, tuple[int, int]]
) -> tuple[int, int]:
    """Files and bytes under a tree (for the version's figures); listings the hub already
    had are read from its catalog, each distinct one once."""
    if tid in memo:
        return memo[tid]
    files = size = 0
    listing = trees.listings.get(tid)
    for e in listing if listing is not None else vault.tree(tid):
        if e.kind == "file":
            files, size = files + 1, size + e.size
        elif e.tree is not None:
            sub = _count(vault, trees, e.tree, memo)
            files, size = files + sub[0], size + sub[1]
    memo[tid] = (files, size)
    return files, size


def _listing(trees: TreeSaver, tid: TreeId, raw: bytes) -> tuple[Entry, ...]:
    """A listing the client sent for `tid`: decoded, checked, stored; ProtocolError or
    Refused when it is not exactly the canonical encoding of safe entries with that id."""
    try:
        entries = decode_tree(raw)
    except MALFORMED:
        raise ProtocolError(f"listing {tid.hex()[:16]} is not a tree encoding") from None
    names: set[bytes] = set()
    for e in entries:
        _check_entry(e)
        if e.name in names:
            raise Refused(f"listing {tid.hex()[:16]} names {e.name!r} twice")
        names.add(e.name)
    if trees.store(list(entries)) != tid:
        raise ProtocolError(f"listing {tid.hex()[:16]} does not hash to its id (or is not canonical)")
    return entries


def _check_entry(e: Entry) -> None:
    name = e.name
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise Refused(f"unsafe name {name!r} refused (names with '/', '..', NUL or empty are refused)")
    if e.hardlink is not None and (
        not e.hardlink or any(p in (b"", b".", b"..") or b"\0" in p for p in e.hardlink.split(b"/"))
    ):
        raise Refused(f"unsafe hard-link path {e.hardlink!r} refused")
    if e.kind == "file" and (e.blob is None or len(e.blob) != DIGEST):
        raise ProtocolError(f"file {name!r} without a content digest")
    if e.kind == "dir" and (e.tree is None or len(e.tree) != DIGEST):
        raise ProtocolError(f"directory {name!r} without a listing digest")
    if e.kind not in ("file", "dir") and (e.blob is not None or e.tree is not None):
        raise ProtocolError(f"{e.kind} {name!r} with content")
    _check_numbers(e.mode, e.uid, e.gid, abs(e.mtime_ns), e.size, e.rdev, e.nlink, e.flags)
    for owner in (e.uname, e.gname):
        if owner is not None and (len(owner) > MAX_OWNER_NAME or "\0" in owner):
            raise ProtocolError(f"{name!r}: an owner name that is too long or holds NUL")
    if e.mode > 0o7777:
        raise ProtocolError(f"{name!r}: mode {e.mode:o} is more than permission bits")
    if e.sparse is not None:
        end = 0
        for off, length in e.sparse:
            _check_numbers(off, length)
            if off < end or off + length > e.size:
                raise ProtocolError(f"{name!r}: a data map out of order or past the end")
            end = off + length


def _check_numbers(*values: int) -> None:
    if not all(isinstance(v, int) and 0 <= v < MAX_ID for v in values):
        raise ProtocolError("a number out of range in an entry")


def _digest(text: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != DIGEST:
        raise ProtocolError(f"a {what} id that is not a SHA-256 in hex")
    return raw


def _result_json(r: SnapshotResult, prefix: str) -> dict[str, Any]:
    latest = r.latest.to_json() if r.latest is not None else None
    if latest is not None:
        latest["collection"] = str(latest["collection"]).removeprefix(prefix)
    return {
        "collection": r.collection.removeprefix(prefix),
        "version": r.version.number if r.version is not None else None,
        "latest": latest,
        "unchanged": r.unchanged,
        "previous": r.previous,
        # A cold collection's changes (the client warns, exit 3) and a mass removal: counts,
        # and the first paths of each (a header has a bound; the hub's `versions` has the rest).
        "modified": len(r.modified),
        "deleted": len(r.deleted),
        "modified_paths": [to_text(p) for p in r.modified[:PATHS_SENT]],
        "deleted_paths": [to_text(p) for p in r.deleted[:PATHS_SENT]],
        "pinned": r.pinned,
        "mass_removal": None if r.mass_removal is None else dataclasses.asdict(r.mass_removal),
        "contents_received": r.files_read,
        "bytes_received": r.bytes_read,
        "bands": r.bands,
        "bytes_stored": r.bytes_stored,
        "seconds": r.seconds,
    }


def hub_log(vault: Vault, client: str, line: str) -> None:
    """One line in the hub's log (``<state_dir>/hub.log``): what a client was refused, or why
    its session ended early."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(vault.state_dir / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(f"{stamp} client {client}: {line}\n")
    log.info("client %s: %s", client, line)


def serve(vault: Vault, client: str, channel: Channel, listing: Listing) -> int:
    """Serve one client's session on `channel`; the exit status of ``vaultfs serve``. A
    refusal or failure is sent to the client as an ``error`` frame (its one line and exit
    code) and written to the hub's log."""
    check_client_name(client)
    try:
        Session(vault, client, channel, listing).run()
    except VaultError as e:
        what = "refused" if isinstance(e, Refused) else "gone" if isinstance(e, Disconnected) else "failed"
        hub_log(vault, client, f"{what}: {e.message}; nothing of the request was committed")
        with contextlib.suppress(OSError):  # the client may be gone already
            channel.send("error", message=e.message, code=e.exit_code)
        return e.exit_code
    return EXIT_OK
