"""`CatalogWriter`: every change to the catalog, inside one write transaction (`Catalog.writer`).

Each value is sealed (`schema.seal`) as it is put; trees are stored as they
are (their id is their hash).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import lmdb

from vaultfs.acceptance import Acceptance
from vaultfs.catalog import schema
from vaultfs.catalog.records import (
    DirMemo,
    FileCacheRow,
    ScrubRow,
    _budget_spent,
    _pack_blob_ref,
    _restore_askers,
    _unseal,
)
from vaultfs.model import (
    MAX_RESTORE_ASKERS,
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    LostBlob,
    RestoreAsker,
    RestoreAskers,
    TreeId,
    VersionInfo,
)


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
        self._put(
            "versions",
            schema.version_key(version.collection, version.number),
            json.dumps(version.to_json(), sort_keys=True).encode(),
        )

    def put_band(self, band: BandInfo) -> None:
        self._put("bands", band.band.encode("ascii"), json.dumps(band.to_json(), sort_keys=True).encode())

    def put_file(self, collection: str, path: bytes, row: FileCacheRow) -> None:
        self._put("files", schema.collection_prefix(collection) + path, row.pack())

    def delete_file(self, collection: str, path: bytes) -> None:
        self._txn.delete(schema.collection_prefix(collection) + path, db=self._db["files"])

    def put_scrub(self, collection: str, path: bytes, row: ScrubRow) -> None:
        """When a source file was last re-read and found (not) to match `row.content`."""
        self._put("scrub", schema.collection_prefix(collection) + path, row.pack())

    def delete_scrub(self, collection: str, path: bytes) -> None:
        self._txn.delete(schema.collection_prefix(collection) + path, db=self._db["scrub"])

    def replace_dir_memos(self, collection: str, root: TreeId, rows: Iterable[tuple[bytes, DirMemo]]) -> None:
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

    def replace_left_out(self, collection: str, paths: Iterable[bytes]) -> None:
        """Drop every left-out row of `collection`, then write one per path in `paths`: what
        this run's rules left out (see `schema`)."""
        prefix = schema.left_out_prefix(collection)
        cur = self._txn.cursor(db=self._db["files"])
        if cur.set_range(prefix):
            while bytes(cur.key()).startswith(prefix):
                if not cur.delete():
                    break
        for path in paths:
            self._put("files", prefix + path, b"")

    # ---- retention support ---------------------------------------------------------------

    def put_acceptance(self, acceptance: Acceptance) -> None:
        """Record an acceptance (`vaultfs.acceptance`); the same one again is a no-op."""
        a = acceptance
        self._put(
            "accepted",
            schema.acceptance_key(a.collection, a.up_to, a.at_ns),
            json.dumps(a.to_json(), sort_keys=True).encode(),
        )

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

    def add_restore_asker(self, band: BandId, restore: int, asker: RestoreAsker) -> bool:
        """Record that `asker` wanted `band`, whose current restore is `restore` (its
        `RestoreInfo.expected_ns`); False if its file was already recorded for it.

        A record about another restore of the band is replaced; past
        `MAX_RESTORE_ASKERS` files only `more` grows. Atomic with this transaction, so
        askers of one band recorded from two threads are both kept.
        """
        key = schema.restore_askers_key(band).encode()
        stored = self._txn.get(key, db=self._db["meta"])
        raw = None if stored is None else bytes(_unseal("meta", key, stored)).decode()
        old = _restore_askers(raw, band)
        if old is None or old.restore != restore:
            old = RestoreAskers(restore)
        if any(a.file == asker.file for a in old.askers):
            return False
        if len(old.askers) < MAX_RESTORE_ASKERS:
            new = RestoreAskers(restore, (*old.askers, asker), old.more)
        else:
            new = RestoreAskers(restore, old.askers, old.more + 1)
        self._put("meta", key, json.dumps(new.to_json(), sort_keys=True).encode())
        return True
