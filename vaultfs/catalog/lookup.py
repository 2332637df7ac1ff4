"""`FileCacheLookup`: a snapshot's reads of one collection's files cache and directory memos.

One long read transaction (`Catalog.files_reader`); a snapshot looks up every
file of a changed directory here, so rows are checked and unpacked inline.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import lmdb

from vaultfs.catalog import schema
from vaultfs.catalog.records import DirMemo, FileCacheRow, _damaged
from vaultfs.model import BlobId, TreeId
from vaultfs.sparse import Extents

_crc32 = zlib.crc32
_unpack_row = schema.FILE_CACHE.unpack_from
_ROW_SEALED = schema.FILE_CACHE.size + schema.SEAL_SIZE
_EXTENT = schema.SPARSE_EXTENT.size
StatKey = tuple[int, int, int, int, int, bytes] | tuple[int, int, int, int, int, bytes, Extents]
_BLOB_SEALED_MIN = schema.BLOB_REF.size + schema.SEAL_SIZE


class FileCacheLookup:
    def __init__(self, txn: lmdb.Transaction, collection: str, files: Any, blobs: Any) -> None:
        self._txn = txn
        self._collection = collection
        self._prefix = schema.collection_prefix(collection)
        self._memo_prefix = schema.dir_memo_prefix(collection)
        self._files = files
        self._blobs = blobs

    def get(self, path: bytes) -> FileCacheRow | None:
        row = self.stat_key(path)
        if row is None:
            return None
        return FileCacheRow(*row[:5], BlobId(row[5]), row[6] if len(row) == 7 else None)

    def stat_key(self, path: bytes) -> StatKey | None:
        """(dev, ino, size, mtime_ns, ctime_ns, blob) of a row, and a sparse file's data map,
        without building a record: a snapshot looks up every file of a changed directory,
        so the seal is checked inline (`schema.is_sound`, without its calls).
        CorruptionError for a damaged row: its blob id could name other content."""
        key = self._prefix + path
        stored = self._txn.get(key, db=self._files)
        if stored is None:
            return None
        if len(stored) != _ROW_SEALED:
            return self._sparse_row(key, stored)
        if _crc32(stored, _crc32(key)) != schema.SEAL_RESIDUE:
            raise _damaged("files", key)
        return _unpack_row(stored)  # unpack_from: the seal after the row is ignored

    def _sparse_row(self, key: bytes, stored: bytes | memoryview) -> StatKey:
        """A row followed by a data map (`FileCacheRow.sparse`)."""
        start = schema.FILE_CACHE.size + schema.SPARSE_COUNT.size
        if len(stored) < start + schema.SEAL_SIZE or _crc32(stored, _crc32(key)) != schema.SEAL_RESIDUE:
            raise _damaged("files", key)
        (count,) = schema.SPARSE_COUNT.unpack_from(stored, schema.FILE_CACHE.size)
        if len(stored) != start + count * _EXTENT + schema.SEAL_SIZE:
            raise _damaged("files", key)
        extents = tuple(schema.SPARSE_EXTENT.unpack_from(stored, start + i * _EXTENT) for i in range(count))
        return (*_unpack_row(stored), extents)

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

    def left_out(self) -> frozenset[bytes]:
        """What the rules left out in the run that made or confirmed the latest version
        (damaged rows read as absent: they only cost a file counted as added, not as now
        included)."""
        prefix = schema.left_out_prefix(self._collection)
        found = []
        cur = self._txn.cursor(db=self._files)
        if cur.set_range(prefix):
            for key, stored in cur:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                if schema.is_sound(key, stored):
                    found.append(key[len(prefix) :])
        return frozenset(found)

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
