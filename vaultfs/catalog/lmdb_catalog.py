"""`Catalog`: typed access to the LMDB databases described in `schema`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


def _pack_blob_ref(ref: BlobRef) -> bytes:
    return schema.BLOB_REF.pack(ref.offset, ref.size) + ref.band.encode("ascii")


def _unpack_blob_ref(raw: bytes) -> BlobRef:
    offset, size = schema.BLOB_REF.unpack_from(raw)
    return BlobRef(BandId(bytes(raw[schema.BLOB_REF.size :]).decode("ascii")), offset, size)


class Catalog:
    """The LMDB environment. Safe to share between threads (py-lmdb uses MDB_NOTLS)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if not readonly:
                path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(
                str(path),
                map_size=MAP_SIZE,
                max_dbs=len(schema.DATABASES) + 4,
                readonly=readonly,
                subdir=True,
                max_readers=256,
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
        if raw is None:
            raise CorruptionError(
                f"tree {tree.hex()[:16]} is missing from the local catalog: "
                "run `vaultfs index rebuild`"
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
        with self.env.begin(db=self.db["files"], buffers=True) as txn:
            yield FileCacheLookup(txn, schema.collection_prefix(collection))

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


class FileCacheLookup:
    def __init__(self, txn: lmdb.Transaction, prefix: bytes) -> None:
        self._txn = txn
        self._db = None
        self._prefix = prefix

    def get(self, path: bytes) -> FileCacheRow | None:
        raw = self._txn.get(self._prefix + path)
        return None if raw is None else FileCacheRow.unpack(bytes(raw))


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
