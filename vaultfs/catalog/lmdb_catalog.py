"""`Catalog`: the LMDB environment and typed reads of the databases described in `schema`.

Every value is sealed on put and its seal checked on every get and iteration
(`schema.seal`), so no damaged record ever reaches a caller: a bad one raises
`CorruptionError` naming the record (directory memo rows read as absent instead).
Records and their packing are in `records`, writes in `writer` (`CatalogWriter`),
a snapshot's files-cache reads in `lookup` (`FileCacheLookup`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from vaultfs.acceptance import Acceptance
from vaultfs.catalog import schema
from vaultfs.catalog.lookup import FileCacheLookup
from vaultfs.catalog.records import (
    REBUILD,
    TREE_CORRUPT,
    ScrubRow,
    _acceptance,
    _band,
    _budget_spent,
    _damaged,
    _lost,
    _record_name,
    _restore_askers,
    _unpack_blob_ref,
    _unseal,
    _version,
    check_data_file,
)
from vaultfs.catalog.writer import CatalogWriter
from vaultfs.errors import CorruptionError, VaultError
from vaultfs.model import (
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    Entry,
    LostBlob,
    RestoreAskers,
    TreeId,
    VersionInfo,
    decode_tree,
    tree_id,
)

MAP_SIZE = 1 << 36  # 64 GiB of address space; the file grows only as used


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
            raise VaultError(
                f"the local catalog {self.path} is in format 1 (written by an "
                "older vaultfs, records without checksums): run `vaultfs index "
                "rebuild` to rebuild it from the store"
            )
        found = bytes(_unseal("meta", key, stored)).decode(errors="replace")
        if found != schema.FORMAT:
            raise VaultError(
                f"the local catalog {self.path} is in format {found!r}, which "
                f"this vaultfs (format {schema.FORMAT}) cannot read: upgrade vaultfs"
            )

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
            raise CorruptionError(f"tree {tree.hex()[:16]} is missing from the local catalog: {REBUILD}")
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

    def scrub_rows(self, collection: str) -> dict[bytes, ScrubRow]:
        """Every scrub row of `collection` by path (one read snapshot). A damaged row is left
        out: it is bookkeeping, and a file without a row only counts as never verified."""
        prefix = schema.collection_prefix(collection)
        out: dict[bytes, ScrubRow] = {}
        if self.db["scrub"] is None:
            return out
        with self.env.begin(db=self.db["scrub"]) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for key, value in cur:
                    key = bytes(key)
                    if not key.startswith(prefix):
                        break
                    if schema.is_sound(key, value):
                        try:
                            out[key[len(prefix) :]] = ScrubRow.unpack(value[: -schema.SEAL_SIZE])
                        except ValueError:
                            continue
        return out

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
            raise CorruptionError(f"local catalog {self.path} is damaged ({e}): {REBUILD}") from None

    def damaged_records(self, limit: int = 20) -> list[str]:
        """Up to `limit` records of any database whose seal (trees: hash) fails, each as
        "what (why)": `index rebuild` rung 1 and `vaultfs check` read every record once.
        The `schema.DISPOSABLE` databases are not read: a damaged row there reads as absent."""
        found: list[str] = []
        try:
            with self.env.begin() as txn:
                for name in schema.DATABASES:
                    if self.db[name] is None or name in schema.DISPOSABLE:
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
            raise CorruptionError(f"local catalog {self.path} is damaged ({e}): {REBUILD}") from None
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

    def acceptances(self, collection: str | None = None) -> list[Acceptance]:
        """The acceptances of `collection` (None: of every collection), oldest up_to first."""
        if self.db["accepted"] is None:
            return []
        prefix = b"" if collection is None else schema.collection_prefix(collection)
        out = []
        with self.env.begin(db=self.db["accepted"]) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix) if prefix else cur.first():
                for key, value in cur:
                    if not bytes(key).startswith(prefix):
                        break
                    out.append(_acceptance(bytes(key), value))
        return out

    # ---- mount support -------------------------------------------------------------------

    def restore_budget_spent(self, day: str) -> int:
        """Bytes of bands the mount asked to restore on UTC `day` (``YYYY-MM-DD``)."""
        return _budget_spent(self.meta(schema.RESTORE_BUDGET_KEY), day)

    def restore_askers(self, band: BandId) -> RestoreAskers | None:
        """Who asked for `band`'s restore through the mount (`model.RestoreAskers`); the
        caller checks `RestoreAskers.about` against the band's current restore."""
        return _restore_askers(self.meta(schema.restore_askers_key(band)), band)
