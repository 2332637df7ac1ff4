"""Frozen records shared by every layer, and the canonical tree encoding.

A *tree* is one directory listing. Its id is the SHA-256 of its canonical
encoding, so unchanged directories are shared between versions (a Merkle tree,
as in git and restic). The encoding is defined here and nowhere else:

    {"format": 1, "entries": [ENTRY, ...]}   entries sorted by name bytes

serialised with ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=True)``. ENTRY holds ``name`` and ``kind`` always, and the other
fields only when they differ from their defaults (see `Entry`). Byte strings
that may not be UTF-8 (names, symlink targets, hard-link paths) are decoded
with ``surrogateescape``; ``ensure_ascii`` writes the lone surrogates as
``\\udcXX`` escapes, which decode back to the same bytes. Digests are
lower-case hex; xattr values are base64.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NewType, TypeVar

from vaultfs.keys import (  # re-exported: band ids and object keys are defined in keys.py
    VAULT_KEY as VAULT_KEY,
)
from vaultfs.keys import BadBandId as BadBandId
from vaultfs.keys import BandId as BandId
from vaultfs.keys import band_file as band_file
from vaultfs.keys import band_key as band_key
from vaultfs.keys import parse_band_id as parse_band_id
from vaultfs.keys import sidecar_key as sidecar_key
from vaultfs.keys import version_key as version_key
from vaultfs.sparse import Extents, data_size

BlobId = NewType("BlobId", bytes)  # 32-byte SHA-256 of a file's content
TreeId = NewType("TreeId", bytes)  # 32-byte SHA-256 of a tree's canonical encoding

Kind = Literal["file", "dir", "symlink", "fifo", "socket", "chardev", "blockdev"]
KINDS: tuple[Kind, ...] = ("file", "dir", "symlink", "fifo", "socket", "chardev", "blockdev")
# Each kind's file type bits in st_mode (what stat.S_IFMT gives).
KIND_BITS: dict[Kind, int] = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
}
TREE_FORMAT = 1


def to_text(raw: bytes) -> str:
    """Bytes that are usually UTF-8 (names, targets) → str that round-trips exactly."""
    return raw.decode("utf-8", "surrogateescape")


def from_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


ContentKey = NewType("ContentKey", bytes)  # 32 bytes: what makes two files' content the same


def content_key(blob: BlobId, size: int, sparse: Extents | None) -> ContentKey:
    """The identity of a file's content, defined here once: two files hold the same content
    exactly when their keys are equal. Everything that decides whether a file *changed*
    compares these (the tree diff, hence a cold collection's warnings and its pins; the
    scrub rows), never the blobs alone.

    A dense file's key is its blob id (its size is the blob's length). A sparse file's blob
    is only the bytes of its data extents, so a hole grown or cut at the end (``truncate
    -s``) or an extent moved leaves the blob as it was: its key is the SHA-256 of the blob
    id, the size and the data map. (A sparse file and a dense one with the same bytes get
    different keys: counted as a change, the safe side.)"""
    if sparse is None:
        return ContentKey(blob)
    h = hashlib.sha256(b"vaultfs sparse content\0" + blob + size.to_bytes(8, "big"))
    for off, length in sparse:
        h.update(off.to_bytes(8, "big") + length.to_bytes(8, "big"))
    return ContentKey(h.digest())


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a directory, with the metadata vaultfs keeps for it."""

    name: bytes
    kind: Kind
    mode: int = 0o644  # permission bits incl. setuid/setgid/sticky (st_mode & 0o7777)
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0  # files: content length; symlinks: target length
    blob: BlobId | None = None  # files: content
    tree: TreeId | None = None  # directories: listing
    target: bytes | None = None  # symlinks, verbatim
    rdev: int = 0  # device nodes
    nlink: int = 1  # files: hard-link count seen in the source
    # Second and later names of a hard-linked file: path (relative to the
    # collection root, '/'-separated) of the first name seen in scan order.
    hardlink: bytes | None = None
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # every namespace; POSIX ACLs in binary form
    flags: int = 0  # kept inode flags (`vaultfs.fsflags`); absent at 0: old tree ids unchanged
    # Sparse files: the data map (vaultfs/sparse.py); the blob is those extents' bytes.
    sparse: Extents | None = None
    # The owner's user and group names, next to the ids, when the snapshot recorded them (a
    # hub's client does: its files may come back on another machine; docs/hub.md). Absent
    # (None) in every local snapshot's entries, so their tree ids are as they were.
    uname: str | None = None
    gname: str | None = None

    @property
    def blob_size(self) -> int:
        """Bytes of the file's blob: its size, or a sparse file's data extents."""
        return self.size if self.sparse is None else data_size(self.sparse)

    @property
    def content_key(self) -> ContentKey | None:
        """The file's content identity (`content_key`); None for an entry without a blob."""
        return None if self.blob is None else content_key(self.blob, self.size, self.sparse)

    def to_json(self) -> dict[str, Any]:  # noqa: C901 - one flat test per optional field
        d: dict[str, Any] = {"name": to_text(self.name), "kind": self.kind}
        if self.mode != 0o644:
            d["mode"] = self.mode
        if self.uid:
            d["uid"] = self.uid
        if self.gid:
            d["gid"] = self.gid
        if self.mtime_ns:
            d["mtime_ns"] = self.mtime_ns
        if self.size:
            d["size"] = self.size
        if self.sparse is not None:
            d["sparse"] = [list(x) for x in self.sparse]
        if self.blob is not None:
            d["blob"] = self.blob.hex()
        if self.tree is not None:
            d["tree"] = self.tree.hex()
        if self.target is not None:
            d["target"] = to_text(self.target)
        if self.rdev:
            d["rdev"] = self.rdev
        if self.nlink != 1:
            d["nlink"] = self.nlink
        if self.hardlink is not None:
            d["hardlink"] = to_text(self.hardlink)
        if self.xattrs:
            d["xattrs"] = [[to_text(k), base64.b64encode(v).decode("ascii")] for k, v in self.xattrs]
        if self.flags:
            d["flags"] = self.flags
        if self.uname is not None:
            d["uname"] = self.uname
        if self.gname is not None:
            d["gname"] = self.gname
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> Entry:
        # Positional (in field order), each optional key looked up once: the mount decodes
        # every listing it shows with this (twice as fast as keywords and nested lookups).
        kind = d["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown entry kind {kind!r}")
        get = d.get
        blob, tree, target, hardlink = get("blob"), get("tree"), get("target"), get("hardlink")
        xattrs, sparse = get("xattrs"), get("sparse")
        return Entry(
            from_text(d["name"]),
            kind,
            get("mode", 0o644),
            get("uid", 0),
            get("gid", 0),
            get("mtime_ns", 0),
            get("size", 0),
            None if blob is None else BlobId(bytes.fromhex(blob)),
            None if tree is None else TreeId(bytes.fromhex(tree)),
            None if target is None else from_text(target),
            get("rdev", 0),
            get("nlink", 1),
            None if hardlink is None else from_text(hardlink),
            tuple((from_text(k), base64.b64decode(v)) for k, v in xattrs) if xattrs else (),
            int(get("flags", 0)),
            None if sparse is None else tuple((int(o), int(n)) for o, n in sparse),
            _name_field(d, "uname"),
            _name_field(d, "gname"),
        )


def _name_field(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def encode_tree(entries: list[Entry] | tuple[Entry, ...]) -> bytes:
    """Canonical encoding of a directory listing (see the module docstring).

    Byte for byte what ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
    ensure_ascii=True)`` writes for ``{"format": 1, "entries": [e.to_json() ...]}``
    (`encode_tree_reference`; a property test holds them equal), built directly:
    a no-change snapshot encodes every directory of the tree, and this is 3x faster.
    """
    ordered = sorted(entries, key=lambda e: e.name)
    return ('{"entries":[' + ",".join(map(_entry_json, ordered)) + f'],"format":{TREE_FORMAT}}}').encode()


def encode_tree_reference(entries: list[Entry] | tuple[Entry, ...]) -> bytes:
    """The definition `encode_tree` implements faster."""
    ordered = sorted(entries, key=lambda e: e.name)
    doc = {"format": TREE_FORMAT, "entries": [e.to_json() for e in ordered]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


_quote = json.encoder.encode_basestring_ascii


def _entry_json(e: Entry) -> str:  # noqa: C901 - unrolled per field for speed (see encode_tree)
    """One entry's JSON with sorted keys, defaults left out (see `Entry.to_json`)."""
    parts = []
    if e.blob is not None:
        parts.append('"blob":"' + e.blob.hex() + '"')
    if e.flags:
        parts.append(f'"flags":{e.flags}')
    if e.gid:
        parts.append(f'"gid":{e.gid}')
    if e.gname is not None:
        parts.append('"gname":' + _quote(e.gname))
    if e.hardlink is not None:
        parts.append('"hardlink":' + _quote(to_text(e.hardlink)))
    parts.append('"kind":"' + e.kind + '"')
    if e.mode != 0o644:
        parts.append(f'"mode":{e.mode}')
    if e.mtime_ns:
        parts.append(f'"mtime_ns":{e.mtime_ns}')
    parts.append('"name":' + _quote(to_text(e.name)))
    if e.nlink != 1:
        parts.append(f'"nlink":{e.nlink}')
    if e.rdev:
        parts.append(f'"rdev":{e.rdev}')
    if e.size:
        parts.append(f'"size":{e.size}')
    if e.sparse is not None:
        parts.append('"sparse":[' + ",".join(f"[{o},{n}]" for o, n in e.sparse) + "]")
    if e.target is not None:
        parts.append('"target":' + _quote(to_text(e.target)))
    if e.tree is not None:
        parts.append('"tree":"' + e.tree.hex() + '"')
    if e.uid:
        parts.append(f'"uid":{e.uid}')
    if e.uname is not None:
        parts.append('"uname":' + _quote(e.uname))
    if e.xattrs:
        parts.append(
            '"xattrs":' + json.dumps(e.to_json()["xattrs"], separators=(",", ":"), ensure_ascii=True)
        )
    return "{" + ",".join(parts) + "}"


def tree_id(encoded: bytes) -> TreeId:
    return TreeId(hashlib.sha256(encoded).digest())


def decode_tree(encoded: bytes) -> tuple[Entry, ...]:
    return tuple(Entry.from_json(e) for e in tree_rows(encoded))


def tree_rows(encoded: bytes) -> list[dict[str, Any]]:
    """A tree's entries as their JSON objects, format and kinds checked (`Entry.from_json`
    makes one an `Entry`). For a reader that needs a few fields of most entries and the
    whole entry of few (the mount's listings): making every `Entry` costs 3x the parse."""
    doc = json.loads(encoded)
    if doc.get("format") != TREE_FORMAT:
        raise ValueError(f"unknown tree format {doc.get('format')!r}")
    rows: list[dict[str, Any]] = doc["entries"]
    for row in rows:
        if row["kind"] not in KINDS:
            raise ValueError(f"unknown entry kind {row['kind']!r}")
    return rows


@dataclass(frozen=True, slots=True)
class BlobRef:
    """Where a blob's content lies: the band and its place in the band's tar stream."""

    band: BandId
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class LostBlob:
    """A blob whose bytes the vault no longer has anywhere it can read: its band is
    missing from the store, or the part of the band that held it is damaged.

    A lost blob has no row in the blob map (nothing may read or deduplicate against
    it); the next snapshot that finds the same content in a source stores it again,
    which heals every version that names it (versions name blobs by SHA-256).
    """

    band: str  # the band that held it, "" when no surviving record says which
    why: str  # "missing" (band object gone) or "damaged" (its bytes do not verify)
    since_ns: int  # when the vault learnt it

    def to_json(self) -> dict[str, Any]:
        return {"band": self.band, "why": self.why, "since_ns": self.since_ns}

    @staticmethod
    def from_json(d: dict[str, Any]) -> LostBlob:
        return LostBlob(band=str(d.get("band", "")), why=str(d["why"]), since_ns=int(d["since_ns"]))


@dataclass(frozen=True, slots=True)
class ChangeStats:
    files: int = 0  # regular files in the version
    bytes: int = 0  # their total size
    added: int = 0
    changed: int = 0
    removed: int = 0
    bytes_added: int = 0  # bytes of new blobs stored by this snapshot (uncompressed)

    def to_json(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}

    @staticmethod
    def from_json(d: dict[str, int]) -> ChangeStats:
        return ChangeStats(**{k: d.get(k, 0) for k in ChangeStats.__slots__})


@dataclass(frozen=True, slots=True)
class RootMeta:
    """The collection root's own metadata, kept in the version record.

    The root directory has no entry in any listing (it is the listing), so its mode,
    owner, mtime and xattrs live beside the root tree in `VersionInfo`: without them a
    0700 home directory would show as world-listable in the mount and lose its mode on
    restore. JSON: ``{"mode": 448, "uid": 0, "gid": 0, "mtime_ns": …, "xattrs": [[k, b64]]}``,
    every key written, and ``"flags"`` (kept inode flags) when not 0.
    """

    mode: int  # st_mode & 0o7777
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    flags: int = 0

    def entry(self, tree: TreeId) -> Entry:
        """The root as a directory entry (empty name), as mount and restore treat entries."""
        return Entry(
            name=b"",
            kind="dir",
            mode=self.mode,
            uid=self.uid,
            gid=self.gid,
            mtime_ns=self.mtime_ns,
            tree=tree,
            xattrs=self.xattrs,
            flags=self.flags,
        )

    def to_json(self) -> dict[str, Any]:
        xattrs = [[to_text(k), base64.b64encode(v).decode("ascii")] for k, v in self.xattrs]
        d = {"mode": self.mode, "uid": self.uid, "gid": self.gid, "mtime_ns": self.mtime_ns}
        return {**d, "xattrs": xattrs, **({"flags": self.flags} if self.flags else {})}

    @staticmethod
    def from_json(d: dict[str, Any]) -> RootMeta:
        return RootMeta(
            mode=int(d["mode"]) & 0o7777,
            uid=int(d["uid"]),
            gid=int(d["gid"]),
            mtime_ns=int(d["mtime_ns"]),
            xattrs=tuple((from_text(k), base64.b64decode(v)) for k, v in d.get("xattrs", ())),
            flags=int(d.get("flags", 0)),
        )


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One immutable snapshot of a collection (the version commit record)."""

    collection: str
    number: int
    created_ns: int  # UTC, nanoseconds since the epoch
    root: TreeId
    bands: tuple[BandId, ...]  # bands this snapshot wrote
    stats: ChangeStats = field(default_factory=ChangeStats)
    previous_created_ns: int | None = None
    host: str = ""
    verified_ns: tuple[int, ...] = ()  # later snapshots that found the tree unchanged
    # The source root's own mode, owner, mtime, xattrs; None in records written before
    # vaultfs kept them (such a version's root shows as 0555 root:root, snapshot time).
    root_meta: RootMeta | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": 1,
            "collection": self.collection,
            "number": self.number,
            "created_ns": self.created_ns,
            "root": self.root.hex(),
            "bands": list(self.bands),
            "stats": self.stats.to_json(),
            "previous_created_ns": self.previous_created_ns,
            "host": self.host,
            "verified_ns": list(self.verified_ns),
        }
        if self.root_meta is not None:
            d["root_meta"] = self.root_meta.to_json()
        return d

    @staticmethod
    def from_json(d: dict[str, Any], where: str = "version record") -> VersionInfo:
        """Parse a version record; `where` (the object it came from) names it in errors."""
        return VersionInfo(
            collection=d["collection"],
            number=int(d["number"]),
            created_ns=int(d["created_ns"]),
            root=TreeId(bytes.fromhex(d["root"])),
            bands=tuple(parse_band_id(b, where) for b in d["bands"]),
            stats=ChangeStats.from_json(d.get("stats", {})),
            previous_created_ns=d.get("previous_created_ns"),
            host=d.get("host", ""),
            verified_ns=tuple(d.get("verified_ns", ())),
            root_meta=RootMeta.from_json(d["root_meta"]) if d.get("root_meta") else None,
        )


BandState = Literal["staging", "standard", "archived", "restoring", "restored", "cached"]

# Storage classes, as S3 names them in LIST and HEAD (``StorageClass``). The one question
# vaultfs asks of a class is whether a GET needs a RestoreObject first; this is the one
# place that answers it (the index's store listings and the archive tier both ask).
# Decision: only GLACIER and DEEP_ARCHIVE are archive classes. GLACIER_IR is read
# instantly (milliseconds, like STANDARD_IA) and is NOT one. INTELLIGENT_TIERING's
# optional Archive Access tiers need a restore too, but S3 reports those in
# ``x-amz-archive-status``, not in the class, and vaultfs never opts into them. No S3
# class is called "GLACIER_IR_ARCHIVE" (an earlier list of vaultfs's named it; no object
# S3 lists can carry it, so leaving it out changes nothing).
#   STANDARD             readable now (vaultfs's default; sidecars, index, versions)
#   STANDARD_IA          readable now (30-day minimum, retrieval fee)
#   ONEZONE_IA           readable now (one zone; 30-day minimum)
#   INTELLIGENT_TIERING  readable now (the instant tiers; see above)
#   GLACIER_IR           readable now (Instant Retrieval; 90-day minimum)
#   GLACIER              restore first (Flexible Retrieval: minutes to hours)
#   DEEP_ARCHIVE         restore first (12-48 hours; vaultfs's archive class)
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
READABLE_STATES = frozenset({"standard", "restored", "cached"})  # a GET works now


def needs_restore(storage_class: str) -> bool:
    """Whether an object of `storage_class` must be restored before it can be read."""
    return storage_class in ARCHIVE_CLASSES


def listed_band_state(storage_class: str, restore: str | None) -> BandState:
    """The state of a band object as the store lists it: its class and its raw
    ``x-amz-restore`` header (None: no restore was asked for). A restore finished when
    S3 says ``ongoing-request="false"``."""
    if not needs_restore(storage_class):
        return "standard"
    if restore and 'ongoing-request="false"' in restore:
        return "restored"
    return "archived"


@dataclass(frozen=True, slots=True)
class BandInfo:
    """What the vault knows about one band object."""

    band: BandId
    state: BandState
    size: int  # bytes of the band object
    sha256: bytes
    uncompressed_size: int
    frames: tuple[tuple[int, int], ...]  # (compressed_size, uncompressed_size) per frame
    storage_class: str = "STANDARD"
    collection: str = ""
    blobs: int = 0
    created_ns: int = 0
    archived_ns: int = 0  # when it moved to the archive class (0: never)
    restore: RestoreInfo | None = None  # the latest restore request, while it matters
    cached: bool = False  # the whole band is in <state_dir>/cache
    levels: tuple[int, int] | None = None  # lowest and highest zstd level of its data frames
    # A band `vaultfs recompress` wrote: the bands whose live content it holds whole (the
    # one it was rewritten from first, then that one's own `replaces`); its catalog's
    # ``recompressed_from``. Versions keep naming the band their snapshot wrote: see
    # `band_successors`.
    replaces: tuple[BandId, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "band": self.band,
            "state": self.state,
            "size": self.size,
            "sha256": self.sha256.hex(),
            "uncompressed_size": self.uncompressed_size,
            "frames": [list(f) for f in self.frames],
            "storage_class": self.storage_class,
            "collection": self.collection,
            "blobs": self.blobs,
            "created_ns": self.created_ns,
        }
        if self.archived_ns:
            d["archived_ns"] = self.archived_ns
        if self.restore is not None:
            d["restore"] = self.restore.to_json()
        if self.cached:
            d["cached"] = True
        if self.levels is not None:
            d["levels"] = list(self.levels)
        if self.replaces:
            d["replaces"] = list(self.replaces)
        return d

    @staticmethod
    def from_json(d: dict[str, Any], where: str = "band record") -> BandInfo:
        """Parse a band record; `where` (the object it came from) names it in errors."""
        return BandInfo(
            band=parse_band_id(d["band"], where),
            state=d["state"],
            size=d["size"],
            sha256=bytes.fromhex(d["sha256"]),
            uncompressed_size=d["uncompressed_size"],
            frames=tuple((int(a), int(b)) for a, b in d["frames"]),
            storage_class=d.get("storage_class", "STANDARD"),
            collection=d.get("collection", ""),
            blobs=d.get("blobs", 0),
            created_ns=d.get("created_ns", 0),
            archived_ns=d.get("archived_ns", 0),
            restore=RestoreInfo.from_json(d["restore"]) if d.get("restore") else None,
            cached=bool(d.get("cached", False)),
            levels=(int(d["levels"][0]), int(d["levels"][1])) if d.get("levels") else None,
            replaces=tuple(parse_band_id(b, where) for b in d.get("replaces", ())),
        )


def band_successors(bands: Iterable[BandInfo]) -> dict[BandId, BandId]:
    """For each band a recompressed band replaces, the band that holds its content now (of
    two that replace it — a run killed after uploading its copy, then a later one — the
    newer). A version record keeps naming the bands its snapshot wrote (it is committed
    once, and its copy in its last band's catalog must match it): the band that holds its
    record copy and trees now is ``successors.get(band, band)``."""
    out: dict[BandId, BandId] = {}
    for b in sorted(bands, key=lambda b: b.band):  # ids sort by creation time
        for old in b.replaces:
            out[old] = b.band
    return out


def level_range(bands: Iterable[BandInfo]) -> tuple[int, int] | None:
    """The lowest and highest zstd level of these bands' data frames (None: none recorded)."""
    ranges = [b.levels for b in bands if b.levels is not None]
    if not ranges:
        return None
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


@dataclass(frozen=True, slots=True)
class RestoreInfo:
    """A restore request for an archived band (S3 RestoreObject) and what became of it."""

    tier: str  # "Bulk" or "Standard"
    requested_ns: int
    expected_ns: int  # ready by (the tier's stated maximum)
    days: int
    ready_ns: int = 0  # when vaultfs first saw the restored copy (0: not yet)
    expires_ns: int = 0  # when S3 deletes the restored copy (0: unknown / not yet)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @staticmethod
    def from_json(d: dict[str, Any]) -> RestoreInfo:
        return RestoreInfo(
            tier=d["tier"],
            requested_ns=d["requested_ns"],
            expected_ns=d["expected_ns"],
            days=d.get("days", 0),
            ready_ns=d.get("ready_ns", 0),
            expires_ns=d.get("expires_ns", 0),
        )


@dataclass(frozen=True, slots=True)
class RestoreAsker:
    """An open through the mount that asked for a band's restore: the file and its process.

    Kept per band in the local catalog (`RestoreAskers`), so that ``vaultfs restore
    status`` (another process) and the hooks can say which files a restore is for and
    whose process wanted them (docs/restore.md, "Who asked").
    """

    file: str  # ``collection@vN/path``, the exact name (to_text), not escaped
    pid: int
    uid: int
    comm: str  # the process's name (/proc/PID/comm)
    exe: str  # its executable, "" if unknown
    at_ns: int

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @staticmethod
    def from_json(d: dict[str, Any]) -> RestoreAsker:
        return RestoreAsker(
            str(d["file"]), int(d["pid"]), int(d["uid"]), str(d["comm"]), str(d["exe"]), int(d["at_ns"])
        )


@dataclass(frozen=True, slots=True)
class RestoreAskers:
    """The opens that asked for one restore of a band (the first `MAX_RESTORE_ASKERS`
    distinct files; `more` counts the others). `restore` ties the record to one request:
    the `RestoreInfo.expected_ns` of the restore it is about, so a record left from an
    earlier restore of the band is never shown for a later one."""

    restore: int
    askers: tuple[RestoreAsker, ...] = ()
    more: int = 0

    def about(self, band: BandInfo) -> bool:
        """Whether this record is about `band`'s current restore."""
        return band.restore is not None and band.restore.expected_ns == self.restore

    def to_json(self) -> dict[str, Any]:
        return {"restore": self.restore, "askers": [a.to_json() for a in self.askers], "more": self.more}

    @staticmethod
    def from_json(d: dict[str, Any]) -> RestoreAskers:
        return RestoreAskers(
            int(d["restore"]), tuple(RestoreAsker.from_json(a) for a in d["askers"]), int(d.get("more", 0))
        )


MAX_RESTORE_ASKERS = 20  # distinct files recorded per restore; more are only counted


def readable_now(band: BandInfo) -> bool:
    """Whether the catalog says `band` can be read without a restore (its state: standard,
    restored or cached)."""
    return band.state in READABLE_STATES


# ---- malformed records ---------------------------------------------------------------------

# What json.loads plus a ``from_json`` raise on a malformed record (a UnicodeDecodeError
# of bytes that are not UTF-8 is a ValueError too). Caught here and nowhere else.
RECORD_ERRORS: tuple[type[Exception], ...] = (ValueError, KeyError, TypeError)

_Record = TypeVar("_Record")


class BadRecord(ValueError):
    """A stored record (JSON) that does not parse into what it should be. `reason` is the
    parser's own message; the exception's text is ``"<where>: <reason>"``."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


def decode_record(
    from_json: Callable[[Any], _Record], raw: bytes | str | dict[str, Any], where: str
) -> _Record:
    """``from_json(json.loads(raw))`` (`raw` already a dict: just ``from_json(raw)``);
    BadRecord naming `where` when the JSON or the record is malformed, so callers catch
    one type whatever the parser raised."""
    try:
        return from_json(raw if isinstance(raw, dict) else json.loads(raw))
    except RECORD_ERRORS as e:
        raise BadRecord(where, str(e)) from e
