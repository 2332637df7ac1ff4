"""`Catalog`: typed access to the LMDB databases described in `schema`."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from vaultfs.catalog import schema
from vaultfs.errors import CorruptionError, VaultError
from vaultfs.model import (
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    Entry,
    TreeId,
    VersionInfo,
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

    @staticmethod
    def unpack(raw: bytes) -> FileCacheRow:
        dev, ino, size, mtime_ns, ctime_ns, blob = schema.FILE_CACHE.unpack(raw)
        return FileCacheRow(dev, ino, size, mtime_ns, ctime_ns, BlobId(blob))


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


def _unpack_blob_ref(raw: bytes) -> BlobRef:
    offset, size = schema.BLOB_REF.unpack_from(raw)
    band = bytes(raw[schema.BLOB_REF.size :]).decode("ascii", "replace")
    return BlobRef(parse_band_id(band, "a blob record of the local catalog (run `vaultfs index "
                                       "rebuild`)"), offset, size)


class Catalog:
    """The LMDB environment. Safe to share between threads (py-lmdb uses MDB_NOTLS)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
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
        except lmdb.Error as e:
            raise VaultError(f"cannot open the local catalog {path}: {e}") from None
        self.db = {
            name: self.env.open_db(name.encode(), create=not readonly)
            for name in schema.DATABASES
        }

    def close(self) -> None:
        self.env.close()

    # ---- reads -------------------------------------------------------------------------

    def meta(self, name: str) -> str | None:
        with self.env.begin(db=self.db["meta"]) as txn:
            raw = txn.get(name.encode())
        return None if raw is None else bytes(raw).decode()

    def blob(self, blob: BlobId) -> BlobRef | None:
        with self.env.begin(db=self.db["blobs"]) as txn:
            raw = txn.get(blob)
        return None if raw is None else _unpack_blob_ref(raw)

    def tree_bytes(self, tree: TreeId) -> bytes | None:
        with self.env.begin(db=self.db["trees"]) as txn:
            raw = txn.get(tree)
        return None if raw is None else bytes(raw)

    def tree(self, tree: TreeId) -> tuple[Entry, ...]:
        raw = self.tree_bytes(tree)
        if raw is None or tree_id(raw) != tree:  # issue 5: a damaged tree is never served
            raise CorruptionError(
                f"tree {tree.hex()[:16]} is {'missing from' if raw is None else 'damaged in'} "
                "the local catalog: run `vaultfs index rebuild`"
            )
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
                    out.append(VersionInfo.from_json(json.loads(value)))
        return out

    def version(self, collection: str, number: int) -> VersionInfo | None:
        with self.env.begin(db=self.db["versions"]) as txn:
            raw = txn.get(schema.version_key(collection, number))
        return None if raw is None else VersionInfo.from_json(json.loads(raw))

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
            return VersionInfo.from_json(json.loads(cur.value()))

    def collections(self) -> list[str]:
        names: list[str] = []
        with self.env.begin(db=self.db["versions"]) as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                name = bytes(key).split(b"\0", 1)[0].decode()
                if not names or names[-1] != name:
                    names.append(name)
        return names

    def band(self, band: BandId) -> BandInfo | None:
        with self.env.begin(db=self.db["bands"]) as txn:
            raw = txn.get(band.encode("ascii"))
        return None if raw is None else BandInfo.from_json(json.loads(raw))

    def bands(self) -> Iterator[BandInfo]:
        with self.env.begin(db=self.db["bands"]) as txn:
            for _, value in txn.cursor():
                yield BandInfo.from_json(json.loads(value))

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
        """Every (key, value) of database `name`, raw; CorruptionError if LMDB fails."""
        try:
            with self.env.begin(db=self.db[name]) as txn:
                for key, value in txn.cursor():
                    yield bytes(key), bytes(value)
        except lmdb.Error as e:
            raise CorruptionError(f"local catalog {self.path} is damaged ({e}): "
                                  "run `vaultfs index rebuild`") from None

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
                yield BlobId(bytes(key)), _unpack_blob_ref(value)

    def tree_ids(self) -> list[TreeId]:
        """Every tree id in the trees database."""
        with self.env.begin(db=self.db["trees"]) as txn:
            return [TreeId(bytes(k)) for k in txn.cursor().iternext(keys=True, values=False)]

    def all_versions(self) -> list[VersionInfo]:
        """Every version of every collection, in (collection, number) order."""
        with self.env.begin(db=self.db["versions"]) as txn:
            return [VersionInfo.from_json(json.loads(v)) for _, v in txn.cursor()]

    # ---- mount support -------------------------------------------------------------------

    def restore_budget_spent(self, day: str) -> int:
        """Bytes of bands the mount asked to restore on UTC `day` (``YYYY-MM-DD``)."""
        return _budget_spent(self.meta(schema.RESTORE_BUDGET_KEY), day)


class FileCacheLookup:
    def __init__(self, txn: lmdb.Transaction, collection: str, files: Any, blobs: Any) -> None:
        self._txn = txn
        self._prefix = schema.collection_prefix(collection)
        self._memo_prefix = schema.dir_memo_prefix(collection)
        self._files = files
        self._blobs = blobs

    def get(self, path: bytes) -> FileCacheRow | None:
        raw = self._txn.get(self._prefix + path, db=self._files)
        return None if raw is None else FileCacheRow.unpack(bytes(raw))

    def stat_key(self, path: bytes) -> tuple[int, int, int, int, int, bytes] | None:
        """(dev, ino, size, mtime_ns, ctime_ns, blob) of a row, without building a record:
        a no-change snapshot looks up every file of the collection."""
        raw = self._txn.get(self._prefix + path, db=self._files)
        return None if raw is None else schema.FILE_CACHE.unpack(raw)

    def has_blob(self, blob: BlobId) -> bool:
        """Whether the blob is still in the vault (a cached row may outlive a pruned blob)."""
        return self._txn.get(blob, db=self._blobs) is not None

    def dir_memo_root(self) -> TreeId | None:
        """The root tree of the version the directory memo rows describe."""
        raw = self._txn.get(self._memo_prefix + schema.DIR_MEMO_ROOT, db=self._files)
        return None if raw is None or len(raw) != 32 else TreeId(bytes(raw))

    def dir_memo(self, path: bytes) -> DirMemo | None:
        """The memo row of a directory (b"": the root); None if absent or unreadable."""
        raw = self._txn.get(self._memo_prefix + path, db=self._files)
        if raw is None:
            return None
        try:
            return DirMemo.unpack(bytes(raw))
        except (ValueError, struct.error):
            return None  # a damaged row only costs rebuilding that listing


class CatalogWriter:
    def __init__(self, txn: lmdb.Transaction, db: dict[str, lmdb._Database]) -> None:
        self._txn = txn
        self._db = db

    def set_meta(self, name: str, value: str) -> None:
        self._txn.put(name.encode(), value.encode(), db=self._db["meta"])

    def put_blob(self, blob: BlobId, ref: BlobRef) -> None:
        self._txn.put(blob, _pack_blob_ref(ref), db=self._db["blobs"])

    def put_tree(self, tree: TreeId, encoded: bytes) -> bool:
        """Store a tree; False when it was already there."""
        return bool(self._txn.put(tree, encoded, db=self._db["trees"], overwrite=False))

    def put_version(self, version: VersionInfo) -> None:
        self._txn.put(
            schema.version_key(version.collection, version.number),
            json.dumps(version.to_json(), sort_keys=True).encode(),
            db=self._db["versions"],
        )

    def put_band(self, band: BandInfo) -> None:
        self._txn.put(
            band.band.encode("ascii"),
            json.dumps(band.to_json(), sort_keys=True).encode(),
            db=self._db["bands"],
        )

    def put_file(self, collection: str, path: bytes, row: FileCacheRow) -> None:
        self._txn.put(schema.collection_prefix(collection) + path, row.pack(), db=self._db["files"])

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
        self._txn.put(prefix + schema.DIR_MEMO_ROOT, root, db=self._db["files"])
        for path, memo in rows:
            self._txn.put(prefix + path, memo.pack(), db=self._db["files"])

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
        raw = self._txn.get(key, db=self._db["meta"])
        spent = _budget_spent(None if raw is None else bytes(raw).decode(), day)
        if nbytes > 0 and spent + nbytes > limit:
            return False
        doc = {"day": day, "bytes": max(0, spent + nbytes)}
        self._txn.put(key, json.dumps(doc, sort_keys=True).encode(), db=self._db["meta"])
        return True


def _budget_spent(raw: str | None, day: str) -> int:
    if raw is None:
        return 0
    try:
        doc = json.loads(raw)
        return int(doc["bytes"]) if doc.get("day") == day else 0
    except (ValueError, KeyError, TypeError):
        raise CorruptionError("the mount's restore budget record in the local catalog is "
                              "damaged: run `vaultfs index rebuild`") from None
