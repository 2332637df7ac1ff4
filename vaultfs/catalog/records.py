"""What the catalog's records hold, and how a damaged one is named and refused.

Rows (`FileCacheRow`, `DirMemo`, blob refs) and how they pack into LMDB
values; unsealing a value (`schema.seal`) and reading version, lost-blob, band
and restore-budget records, each refused with a `CorruptionError` that names
the record (`_damaged`); `check_data_file`, run before LMDB maps ``data.mdb``.
The underscore names are for the catalog's own modules.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vaultfs.acceptance import Acceptance
from vaultfs.catalog import schema
from vaultfs.errors import CorruptionError, VaultError
from vaultfs.model import (
    BadRecord,
    BandInfo,
    BlobId,
    BlobRef,
    ContentKey,
    LostBlob,
    RestoreAskers,
    TreeId,
    VersionInfo,
    decode_record,
    parse_band_id,
)
from vaultfs.sparse import Extents


@dataclass(frozen=True, slots=True)
class FileCacheRow:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    blob: BlobId
    sparse: Extents | None = None  # a sparse file's data map: (offset, length) pairs after the row

    def pack(self) -> bytes:
        row = schema.FILE_CACHE.pack(self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns, self.blob)
        if self.sparse is None:
            return row
        count = schema.SPARSE_COUNT.pack(len(self.sparse))  # also there for a map without data
        return row + count + b"".join(schema.SPARSE_EXTENT.pack(*x) for x in self.sparse)


@dataclass(frozen=True, slots=True)
class ScrubRow:
    """When a source file's bytes last matched `content`, and when they last did not
    (schema: ``scrub``); 0 for never. `content` is the entry's `model.content_key` (a
    dense file's blob id), so a row never vouches for a sparse file of another size or
    data map that happens to have the same blob."""

    verified_ns: int
    content: ContentKey
    rot_ns: int = 0

    def pack(self) -> bytes:
        return schema.SCRUB_ROW.pack(self.verified_ns, self.content, self.rot_ns)

    @staticmethod
    def unpack(raw: bytes | memoryview) -> ScrubRow:
        """ValueError for bytes that are not a packed row."""
        if len(raw) != schema.SCRUB_ROW.size:
            raise ValueError("not a scrub row")
        verified_ns, content, rot_ns = schema.SCRUB_ROW.unpack(raw)
        return ScrubRow(verified_ns, ContentKey(bytes(content)), rot_ns)


@dataclass(frozen=True, slots=True)
class DirMemo:
    """What the latest version holds for one directory of a collection (schema: ``files``)."""

    signature: bytes  # `source.listing_signature` of its entries when the tree was built
    tree: TreeId
    files: int  # regular files directly in it
    size: int  # and their bytes
    subtrees: tuple[tuple[bytes, TreeId], ...]  # (name, tree) of its subdirectories, in `tree`

    def pack(self) -> bytes:
        parts = [schema.DIR_MEMO.pack(self.signature, self.tree, self.files, self.size)]
        for name, tree in self.subtrees:
            parts += [schema.DIR_MEMO_CHILD.pack(len(name)), name, tree]
        return b"".join(parts)

    @staticmethod
    def unpack(raw: bytes) -> DirMemo:
        """ValueError (or struct.error) on bytes that are not a packed DirMemo."""
        signature, tree, files, size = schema.DIR_MEMO.unpack_from(raw)
        pos, subtrees = schema.DIR_MEMO.size, []
        while pos < len(raw):
            (n,) = schema.DIR_MEMO_CHILD.unpack_from(raw, pos)
            pos += schema.DIR_MEMO_CHILD.size
            name, tree_id = raw[pos : pos + n], raw[pos + n : pos + n + 32]
            if len(tree_id) != 32:
                raise ValueError("truncated directory memo")
            subtrees.append((bytes(name), TreeId(bytes(tree_id))))
            pos += n + 32
        return DirMemo(bytes(signature), TreeId(bytes(tree)), files, size, tuple(subtrees))


def _pack_blob_ref(ref: BlobRef) -> bytes:
    return schema.BLOB_REF.pack(ref.offset, ref.size) + ref.band.encode("ascii")


def _unpack_blob_ref(raw: bytes | memoryview) -> BlobRef:
    offset, size = schema.BLOB_REF.unpack_from(raw)
    band = bytes(raw[schema.BLOB_REF.size :]).decode("ascii", "replace")
    return BlobRef(
        parse_band_id(band, "a blob record of the local catalog (run `vaultfs index rebuild`)"), offset, size
    )


REBUILD = "run `vaultfs index rebuild`"
TREE_CORRUPT = "corrupt: it does not hash to its id"


def _record_name(db: str, key: bytes) -> str:
    """What a record is, for a one-line message (keys of damaged records may be garbage)."""
    text = bytes(key)
    if db == "blobs":
        return f"blob record {text.hex()[:16]}"
    if db == "lost":
        return f"lost-blob record {text.hex()[:16]}"
    if db == "trees":
        return f"tree {text.hex()[:16]}"
    coll, sep, rest = text.partition(b"\0")
    if db == "versions" and sep and len(rest) == 8:
        return f"version record {coll.decode(errors='replace')}@v{int.from_bytes(rest, 'big')}"
    if db == "scrub" and sep:
        return f"scrub row {(coll + b'/' + rest).decode(errors='backslashreplace')!r}"
    if db == "accepted" and sep and len(rest) == 16:
        return f"acceptance record {coll.decode(errors='replace')}@v{int.from_bytes(rest[:8], 'big')}"
    if db == "files" and sep and b"\1" not in coll and b"\2" not in coll:
        return f"files cache row {(coll + b'/' + rest).decode(errors='backslashreplace')!r}"
    owner, left_out, path = text.partition(b"\2")
    if db == "files" and not sep and left_out and b"\1" not in owner:
        return f"left-out row {(owner + b'/' + path).decode(errors='backslashreplace')!r}"
    name = {"meta": "meta record", "bands": "band record", "files": "directory memo row"}
    return f"{name.get(db, db + ' record')} {text.decode(errors='backslashreplace')[:80]!r}"


def _damaged(db: str, key: bytes, why: str = "checksum mismatch") -> CorruptionError:
    return CorruptionError(f"the local catalog's {_record_name(db, key)} is damaged ({why}): {REBUILD}")


def _unseal(db: str, key: bytes, stored: bytes | memoryview) -> bytes | memoryview:
    """The value `schema.seal` sealed under `key`; CorruptionError if the seal is broken."""
    if not schema.is_sound(key, stored):
        raise _damaged(db, key)
    return stored[: -schema.SEAL_SIZE]


def check_data_file(lmdb_dir: Path) -> None:
    """CorruptionError when ``data.mdb`` is shorter than the pages LMDB will map.

    Reads the two meta pages with plain reads (no mapping) and, like LMDB, trusts the
    one with the newer transaction id. Touching a mapped page past the end of the file
    is SIGBUS, which kills the process before Python can report anything, so this runs
    before every `lmdb.open`. A missing file is not checked (a new environment), nor is
    any on a 32-bit build, whose meta pages have another layout.
    """
    data = lmdb_dir / "data.mdb"
    if struct.calcsize("P") != 8:
        return
    try:
        fd = os.open(data, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as e:
        raise VaultError(f"cannot read the local catalog {data}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        first = os.pread(fd, schema.LMDB_META.size, 0)
        page_size = schema.LMDB_META.unpack(first)[3] if len(first) == schema.LMDB_META.size else 0
        second = os.pread(fd, schema.LMDB_META.size, page_size) if page_size else b""
    finally:
        os.close(fd)
    metas = [schema.LMDB_META.unpack(raw) for raw in (first, second) if len(raw) == schema.LMDB_META.size]
    valid = [
        m
        for m in metas
        if m[0] & schema.LMDB_P_META and m[1] == schema.LMDB_MAGIC and m[2] == schema.LMDB_DATA_VERSION
    ]
    where = f"the local catalog {lmdb_dir} is damaged"
    if len(valid) < 2 or not 512 <= page_size <= 65536:
        raise CorruptionError(f"{where}: data.mdb ({size} bytes) has no valid LMDB meta pages: {REBUILD}")
    last_page = max(valid, key=lambda m: m[5])[4]
    needed = (last_page + 1) * page_size
    if size < needed:
        raise CorruptionError(
            f"{where}: data.mdb is truncated ({size} bytes, its pages need {needed}): {REBUILD}"
        )


_R = TypeVar("_R")


def _record(db: str, key: bytes, stored: bytes | memoryview, parse: Callable[[Any], _R], sealed: bool) -> _R:
    """A JSON record of `db` (its seal checked unless the caller did); a malformed one is
    named as damaged, like a bad seal."""
    raw = _unseal(db, key, stored) if sealed else stored
    try:
        return decode_record(parse, bytes(raw), db)
    except BadRecord as e:
        raise _damaged(db, key, f"unreadable: {e.reason}") from None


def _version(key: bytes, stored: bytes | memoryview, *, sealed: bool = True) -> VersionInfo:
    return _record("versions", key, stored, VersionInfo.from_json, sealed)


def _lost(key: bytes, stored: bytes | memoryview, *, sealed: bool = True) -> LostBlob:
    return _record("lost", key, stored, LostBlob.from_json, sealed)


def _band(key: bytes, stored: bytes | memoryview, *, sealed: bool = True) -> BandInfo:
    return _record("bands", key, stored, BandInfo.from_json, sealed)


def _acceptance(key: bytes, stored: bytes | memoryview) -> Acceptance:
    return _record("accepted", key, stored, Acceptance.from_json, True)


def _budget_spent(raw: str | None, day: str) -> int:
    if raw is None:
        return 0
    try:
        return decode_record(
            lambda doc: int(doc["bytes"]) if doc.get("day") == day else 0, raw, "restore budget"
        )
    except BadRecord:
        raise CorruptionError(
            "the mount's restore budget record in the local catalog is damaged: run `vaultfs index rebuild`"
        ) from None


def _restore_askers(raw: str | None, band: str) -> RestoreAskers | None:
    if raw is None:
        return None
    try:
        return decode_record(RestoreAskers.from_json, raw, "restore askers")
    except BadRecord:
        raise CorruptionError(
            f"the local catalog's record of who asked for band {band}'s restore is damaged: "
            "run `vaultfs index rebuild`"
        ) from None
