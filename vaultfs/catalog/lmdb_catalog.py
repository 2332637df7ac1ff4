"""`Catalog`: typed access to the LMDB databases described in `schema`.

Every value is sealed on put and its seal checked on every get and iteration
(`schema.seal`), so no damaged record ever reaches a caller: a bad one raises
`CorruptionError` naming the record (directory memo rows read as absent instead).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from vaultfs.catalog import schema
from vaultfs.errors import CorruptionError, VaultError
from vaultfs.model import (
    BadRecord,
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    Entry,
    LostBlob,
    TreeId,
    VersionInfo,
    decode_record,
    decode_tree,
    parse_band_id,
    tree_id,
)

MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows only as used


@dataclass(frozen=True, slots=True)
class FileCacheRow:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    blob: BlobId

    def pack(self) -> bytes:
        return schema.FILE_CACHE.pack(
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns, self.blob
        )


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
            name, tree_id = raw[pos:pos + n], raw[pos + n:pos + n + 32]
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
    return BlobRef(parse_band_id(band, "a blob record of the local catalog (run `vaultfs index "
                                       "rebuild`)"), offset, size)


REBUILD = "run `vaultfs index rebuild`"
_crc32 = zlib.crc32
_unpack_row = schema.FILE_CACHE.unpack_from
_ROW_SEALED = schema.FILE_CACHE.size + schema.SEAL_SIZE
_BLOB_SEALED_MIN = schema.BLOB_REF.size + schema.SEAL_SIZE
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
    if db == "files" and sep and b"\1" not in coll:
        return f"files cache row {(coll + b'/' + rest).decode(errors='backslashreplace')!r}"
    name = {"meta": "meta record", "bands": "band record", "files": "directory memo row"}
    return f"{name.get(db, db + ' record')} {text.decode(errors='backslashreplace')[:80]!r}"


def _damaged(db: str, key: bytes, why: str = "checksum mismatch") -> CorruptionError:
    return CorruptionError(f"the local catalog's {_record_name(db, key)} is damaged ({why}): "
                           f"{REBUILD}")


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
    metas = [schema.LMDB_META.unpack(raw) for raw in (first, second)
             if len(raw) == schema.LMDB_META.size]
    valid = [m for m in metas if m[0] & schema.LMDB_P_META and m[1] == schema.LMDB_MAGIC
             and m[2] == schema.LMDB_DATA_VERSION]
    where = f"the local catalog {lmdb_dir} is damaged"
    if len(valid) < 2 or not 512 <= page_size <= 65536:
        raise CorruptionError(f"{where}: data.mdb ({size} bytes) has no valid LMDB meta "
                              f"pages: {REBUILD}")
    last_page = max(valid, key=lambda m: m[5])[4]
    needed = (last_page + 1) * page_size
    if size < needed:
        raise CorruptionError(f"{where}: data.mdb is truncated ({size} bytes, its pages "
                              f"need {needed}): {REBUILD}")


class Catalog:
    """The LMDB environment. Safe to share between threads (py-lmdb uses MDB_NOTLS)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        check_data_file(path)
        try:
            if not readonly:
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.env = lmdb.open(  # mode: the directory 0700, data and lock files 0600
                str(path),
                map_size=MAP_SIZE,
                max_dbs=len(schema.DATABASES) + 4,
                readonly=readonly,
                subdir=True,
                max_readers=256,
                mode=0o700,
            )
            self.db = {name: self._open_db(name, readonly) for name in schema.DATABASES}
            self._check_format(readonly)
        except lmdb.Error as e:
            raise VaultError(f"cannot open the local catalog {path}: {e}") from None
        except VaultError:
            self.env.close()
            raise

    def _open_db(self, name: str, readonly: bool) -> Any:
        """A named database; None for an optional one that a read-only open cannot create
        (a catalog written before it existed: it reads as empty)."""
        try:
            return self.env.open_db(name.encode(), create=not readonly)
        except lmdb.NotFoundError:
            if name in schema.OPTIONAL_DATABASES:
                return None
            raise

    def _check_format(self, readonly: bool) -> None:
        """Refuse a catalog of another format; stamp `schema.FORMAT` on a new one."""
        key = b"format"
        with self.env.begin(db=self.db["meta"]) as txn:
            stored = txn.get(key)
            fresh = stored is None and txn.stat(self.db["meta"])["entries"] == 0
        if fresh and not readonly:
            with self.env.begin(db=self.db["meta"], write=True) as txn:
                txn.put(key, schema.seal(key, schema.FORMAT.encode()), overwrite=False)
            return
        if fresh:
            return
        if stored is None:
            raise _damaged("meta", key, "it is missing")
        if bytes(stored) == b"1":
            raise VaultError(f"the local catalog {self.path} is in format 1 (written by an "
                             "older vaultfs, records without checksums): run `vaultfs index "
                             "rebuild` to rebuild it from the store")
        found = bytes(_unseal("meta", key, stored)).decode(errors="replace")
        if found != schema.FORMAT:
            raise VaultError(f"the local catalog {self.path} is in format {found!r}, which "
                             f"this vaultfs (format {schema.FORMAT}) cannot read: upgrade vaultfs")

    def close(self) -> None:
        self.env.close()

    # ---- reads -------------------------------------------------------------------------

    def _get(self, db: str, key: bytes) -> bytes | None:
        """The unsealed value of `key` in `db`, or None."""
        with self.env.begin(db=self.db[db]) as txn:
            stored = txn.get(key)
            return None if stored is None else bytes(_unseal(db, key, stored))

    def meta(self, name: str) -> str | None:
        raw = self._get("meta", name.encode())
        return None if raw is None else raw.decode()

    def blob(self, blob: BlobId) -> BlobRef | None:
        raw = self._get("blobs", blob)
        return None if raw is None else _unpack_blob_ref(raw)

    def lost_blob(self, blob: BlobId) -> LostBlob | None:
        """Why `blob`'s bytes are gone, or None if it is not known to be lost."""
        if self.db["lost"] is None:
            return None
        raw = self._get("lost", blob)
        return None if raw is None else _lost(blob, raw, sealed=False)

    def lost_blobs(self) -> dict[BlobId, LostBlob]:
        """Every blob known to be lost (one read snapshot; the table is small)."""
        if self.db["lost"] is None:
            return {}
        with self.env.begin(db=self.db["lost"]) as txn:
            return {BlobId(bytes(k)): _lost(bytes(k), v) for k, v in txn.cursor()}

    def tree_bytes(self, tree: TreeId) -> bytes | None:
        """A tree's encoding, checked against its id (CorruptionError if it does not hash)."""
        with self.env.begin(db=self.db["trees"]) as txn:
            raw = txn.get(tree)
        if raw is None:
            return None
        raw = bytes(raw)
        if tree_id(raw) != tree:  # issue 5: a damaged tree is never served
            raise _damaged("trees", tree, TREE_CORRUPT)
        return raw

    def tree(self, tree: TreeId) -> tuple[Entry, ...]:
        raw = self.tree_bytes(tree)
        if raw is None:
            raise CorruptionError(f"tree {tree.hex()[:16]} is missing from the local catalog: "
                                  f"{REBUILD}")
        return decode_tree(raw)

    def has_tree(self, tree: TreeId) -> bool:
        with self.env.begin(db=self.db["trees"]) as txn:
            return txn.get(tree) is not None

    def versions(self, collection: str) -> list[VersionInfo]:
        prefix = schema.collection_prefix(collection)
        out = []
        with self.env.begin(db=self.db["versions"]) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for key, value in cur:
                    if not bytes(key).startswith(prefix):
                        break
                    out.append(_version(key, value))
        return out

    def version(self, collection: str, number: int) -> VersionInfo | None:
        key = schema.version_key(collection, number)
        raw = self._get("versions", key)
        return None if raw is None else _version(key, raw, sealed=False)

    def latest_version(self, collection: str) -> VersionInfo | None:
        prefix = schema.collection_prefix(collection)
        with self.env.begin(db=self.db["versions"]) as txn:
            cur = txn.cursor()
            # Position after the last key of this collection, then step back.
            if not cur.set_range(prefix[:-1] + b"\x01"):
                if not cur.last():
                    return None
            elif not cur.prev():
                return None
            key = bytes(cur.key())
            if not key.startswith(prefix):
                return None
            return _version(key, cur.value())

    def collections(self) -> list[str]:
        names: list[str] = []
        with self.env.begin(db=self.db["versions"]) as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                name = bytes(key).split(b"\0", 1)[0].decode()
                if not names or names[-1] != name:
                    names.append(name)
        return names

    def band(self, band: BandId) -> BandInfo | None:
        key = band.encode("ascii")
        raw = self._get("bands", key)
        return None if raw is None else _band(key, raw, sealed=False)

    def bands(self) -> Iterator[BandInfo]:
        with self.env.begin(db=self.db["bands"]) as txn:
            for key, value in txn.cursor():
                yield _band(key, value)

    @contextmanager
    def files_reader(self, collection: str) -> Iterator[FileCacheLookup]:
        """A long read transaction over one collection's files cache (for a scan)."""
        with self.env.begin(buffers=True) as txn:
            yield FileCacheLookup(txn, collection, self.db["files"], self.db["blobs"])

    def file_paths(self, collection: str) -> Iterator[bytes]:
        prefix = schema.collection_prefix(collection)
        with self.env.begin(db=self.db["files"]) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for key in cur.iternext(keys=True, values=False):
                    key = bytes(key)
                    if not key.startswith(prefix):
                        break
                    yield key[len(prefix) :]

    # ---- writes ------------------------------------------------------------------------

    @contextmanager
    def writer(self) -> Iterator[CatalogWriter]:
        """One write transaction: everything inside commits together or not at all."""
        with self.env.begin(write=True) as txn:
            yield CatalogWriter(txn, self.db)

    # ---- index support (vaultfs.index and vaultfs.check) ------------------------------

    def iter_raw(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of database `name`, unsealed (trees: checked against their
        id); CorruptionError for a damaged record or if LMDB fails."""
        if self.db[name] is None:
            return
        try:
            with self.env.begin(db=self.db[name]) as txn:
                for key, value in txn.cursor():
                    key = bytes(key)
                    if name != "trees":
                        yield key, bytes(_unseal(name, key, value))
                    elif tree_id(value) == key:
                        yield key, bytes(value)
                    else:
                        raise _damaged(name, key, TREE_CORRUPT)
        except lmdb.Error as e:
            raise CorruptionError(f"local catalog {self.path} is damaged ({e}): "
                                  f"{REBUILD}") from None

    def damaged_records(self, limit: int = 20) -> list[str]:
        """Up to `limit` records of any database whose seal (trees: hash) fails, each as
        "what (why)": `index rebuild` rung 1 and `vaultfs check` read every record once."""
        found: list[str] = []
        try:
            with self.env.begin() as txn:
                for name in schema.DATABASES:
                    if self.db[name] is None:
                        continue
                    for key, value in txn.cursor(db=self.db[name]):
                        if name == "trees":
                            why = "" if tree_id(value) == key else TREE_CORRUPT
                        else:
                            why = "" if schema.is_sound(key, value) else "checksum mismatch"
                        if why:
                            found.append(f"{_record_name(name, key)} ({why})")
                            if len(found) >= limit:
                                return found
        except lmdb.Error as e:
            raise CorruptionError(f"local catalog {self.path} is damaged ({e}): "
                                  f"{REBUILD}") from None
        return found

    def iter_trees(self) -> Iterator[tuple[TreeId, bytes]]:
        for key, value in self.iter_raw("trees"):
            yield TreeId(key), value

    def iter_blobs(self) -> Iterator[tuple[BlobId, BlobRef]]:
        for key, value in self.iter_raw("blobs"):
            yield BlobId(key), _unpack_blob_ref(value)

    # ---- retention support ---------------------------------------------------------------

    def blob_refs(self) -> Iterator[tuple[BlobId, BlobRef]]:
        """Every (blob, where it lies) of the blob map, in blob id order (one read snapshot)."""
        with self.env.begin(db=self.db["blobs"]) as txn:
            for key, value in txn.cursor():
                yield BlobId(bytes(key)), _unpack_blob_ref(_unseal("blobs", key, value))

    def tree_ids(self) -> list[TreeId]:
        """Every tree id in the trees database."""
        with self.env.begin(db=self.db["trees"]) as txn:
            return [TreeId(bytes(k)) for k in txn.cursor().iternext(keys=True, values=False)]

    def all_versions(self) -> list[VersionInfo]:
        """Every version of every collection, in (collection, number) order."""
        with self.env.begin(db=self.db["versions"]) as txn:
            return [_version(k, v) for k, v in txn.cursor()]

    # ---- mount support -------------------------------------------------------------------

    def restore_budget_spent(self, day: str) -> int:
        """Bytes of bands the mount asked to restore on UTC `day` (``YYYY-MM-DD``)."""
        return _budget_spent(self.meta(schema.RESTORE_BUDGET_KEY), day)


def _version(key: bytes, stored: bytes | memoryview, *, sealed: bool = True) -> VersionInfo:
    raw = _unseal("versions", key, stored) if sealed else stored
    try:
        return decode_record(VersionInfo.from_json, bytes(raw), "versions")
    except BadRecord as e:
        raise _damaged("versions", key, f"unreadable: {e.reason}") from None


def _lost(key: bytes, stored: bytes | memoryview, *, sealed: bool = True) -> LostBlob:
    raw = _unseal("lost", key, stored) if sealed else stored
    try:
        return decode_record(LostBlob.from_json, bytes(raw), "lost")
    except BadRecord as e:
        raise _damaged("lost", key, f"unreadable: {e.reason}") from None


def _band(key: bytes, stored: bytes | memoryview, *, sealed: bool = True) -> BandInfo:
    raw = _unseal("bands", key, stored) if sealed else stored
    try:
        return decode_record(BandInfo.from_json, bytes(raw), "bands")
    except BadRecord as e:
        raise _damaged("bands", key, f"unreadable: {e.reason}") from None


class FileCacheLookup:
    def __init__(self, txn: lmdb.Transaction, collection: str, files: Any, blobs: Any) -> None:
        self._txn = txn
        self._prefix = schema.collection_prefix(collection)
        self._memo_prefix = schema.dir_memo_prefix(collection)
        self._files = files
        self._blobs = blobs

    def get(self, path: bytes) -> FileCacheRow | None:
        row = self.stat_key(path)
        return None if row is None else FileCacheRow(*row[:5], BlobId(row[5]))

    def stat_key(self, path: bytes) -> tuple[int, int, int, int, int, bytes] | None:
        """(dev, ino, size, mtime_ns, ctime_ns, blob) of a row, without building a record:
        a snapshot looks up every file of a changed directory, so the seal is checked
        inline (`schema.is_sound`, without its calls). CorruptionError for a damaged row:
        its blob id could name other content."""
        key = self._prefix + path
        stored = self._txn.get(key, db=self._files)
        if stored is None:
            return None
        if len(stored) != _ROW_SEALED or _crc32(stored, _crc32(key)) != schema.SEAL_RESIDUE:
            raise _damaged("files", key)
        return _unpack_row(stored)  # unpack_from: the seal after the row is ignored

    def has_blob(self, blob: BlobId) -> bool:
        """Whether the blob is still in the vault (a cached row may outlive a pruned blob);
        CorruptionError if its record is damaged (it would be reused, then misread)."""
        stored = self._txn.get(blob, db=self._blobs)
        if stored is None:
            return False
        if len(stored) < _BLOB_SEALED_MIN or _crc32(stored, _crc32(blob)) != schema.SEAL_RESIDUE:
            raise _damaged("blobs", blob)
        return True

    def _memo_value(self, key: bytes) -> bytes | None:
        stored = self._txn.get(key, db=self._files)
        if stored is None or not schema.is_sound(key, stored):
            return None  # a damaged row only costs rebuilding that listing
        return bytes(stored[: -schema.SEAL_SIZE])

    def dir_memo_root(self) -> TreeId | None:
        """The root tree of the version the directory memo rows describe."""
        raw = self._memo_value(self._memo_prefix + schema.DIR_MEMO_ROOT)
        return None if raw is None or len(raw) != 32 else TreeId(raw)

    def dir_memo(self, path: bytes) -> DirMemo | None:
        """The memo row of a directory (b"": the root); None if absent or unreadable."""
        raw = self._memo_value(self._memo_prefix + path)
        if raw is None:
            return None
        try:
            return DirMemo.unpack(raw)
        except (ValueError, struct.error):
            return None  # a damaged row only costs rebuilding that listing


class CatalogWriter:
    def __init__(self, txn: lmdb.Transaction, db: dict[str, lmdb._Database]) -> None:
        self._txn = txn
        self._db = db

    def _put(self, db: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, schema.seal(key, value), db=self._db[db])

    def set_meta(self, name: str, value: str) -> None:
        if name == "format":
            raise ValueError("the catalog stamps its own format (schema.FORMAT)")
        self._put("meta", name.encode(), value.encode())

    def put_blob(self, blob: BlobId, ref: BlobRef) -> None:
        """Record where a blob lies; a blob that was lost is healed by it."""
        self._put("blobs", blob, _pack_blob_ref(ref))
        self._txn.delete(blob, db=self._db["lost"])

    def mark_lost(self, blob: BlobId, lost: LostBlob) -> None:
        """The blob's bytes are gone: drop its place from the blob map (nothing reads or
        deduplicates against it any more) and remember why, until `put_blob` heals it."""
        self._txn.delete(blob, db=self._db["blobs"])
        self._put("lost", blob, json.dumps(lost.to_json(), sort_keys=True).encode())

    def forget_lost(self, blob: BlobId) -> bool:
        """Drop a lost blob's record (no version names it any more); False if absent."""
        return bool(self._txn.delete(blob, db=self._db["lost"]))

    def put_tree(self, tree: TreeId, encoded: bytes) -> bool:
        """Store a tree; False when it was already there."""
        return bool(self._txn.put(tree, encoded, db=self._db["trees"], overwrite=False))

    def put_version(self, version: VersionInfo) -> None:
        self._put("versions", schema.version_key(version.collection, version.number),
                  json.dumps(version.to_json(), sort_keys=True).encode())

    def put_band(self, band: BandInfo) -> None:
        self._put("bands", band.band.encode("ascii"),
                  json.dumps(band.to_json(), sort_keys=True).encode())

    def put_file(self, collection: str, path: bytes, row: FileCacheRow) -> None:
        self._put("files", schema.collection_prefix(collection) + path, row.pack())

    def delete_file(self, collection: str, path: bytes) -> None:
        self._txn.delete(schema.collection_prefix(collection) + path, db=self._db["files"])

    def replace_dir_memos(
        self, collection: str, root: TreeId, rows: Iterable[tuple[bytes, DirMemo]]
    ) -> None:
        """Drop every directory memo row of `collection`, then write `rows`, which describe
        the version with tree `root`."""
        prefix = schema.dir_memo_prefix(collection)
        cur = self._txn.cursor(db=self._db["files"])
        if cur.set_range(prefix):
            while bytes(cur.key()).startswith(prefix):
                if not cur.delete():
                    break
        self._put("files", prefix + schema.DIR_MEMO_ROOT, root)
        for path, memo in rows:
            self._put("files", prefix + path, memo.pack())

    # ---- retention support ---------------------------------------------------------------

    def delete_version(self, collection: str, number: int) -> bool:
        """Remove a version record; False when it was not there."""
        return bool(self._txn.delete(schema.version_key(collection, number), db=self._db["versions"]))

    def delete_band(self, band: BandId) -> bool:
        """Remove a band's BandInfo (not its blob entries: see `delete_blob`)."""
        return bool(self._txn.delete(band.encode("ascii"), db=self._db["bands"]))

    def delete_blob(self, blob: BlobId) -> bool:
        return bool(self._txn.delete(blob, db=self._db["blobs"]))

    def delete_tree(self, tree: TreeId) -> bool:
        return bool(self._txn.delete(tree, db=self._db["trees"]))

    def delete_meta(self, name: str) -> bool:
        return bool(self._txn.delete(name.encode(), db=self._db["meta"]))

    # ---- mount support -------------------------------------------------------------------

    def charge_restore_budget(self, day: str, nbytes: int, limit: int) -> bool:
        """Add `nbytes` to UTC `day`'s restore spending unless that would pass `limit`.

        Atomic with the rest of this write transaction, so two bands asked for at
        once cannot both slip under the limit. A negative `nbytes` refunds.
        """
        key = schema.RESTORE_BUDGET_KEY.encode()
        stored = self._txn.get(key, db=self._db["meta"])
        raw = None if stored is None else bytes(_unseal("meta", key, stored)).decode()
        spent = _budget_spent(raw, day)
        if nbytes > 0 and spent + nbytes > limit:
            return False
        doc = {"day": day, "bytes": max(0, spent + nbytes)}
        self._put("meta", key, json.dumps(doc, sort_keys=True).encode())
        return True


def _budget_spent(raw: str | None, day: str) -> int:
    if raw is None:
        return 0
    try:
        return decode_record(lambda doc: int(doc["bytes"]) if doc.get("day") == day else 0, raw,
                             "restore budget")
    except BadRecord:
        raise CorruptionError("the mount's restore budget record in the local catalog is "
                              "damaged: run `vaultfs index rebuild`") from None
