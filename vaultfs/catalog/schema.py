"""The LMDB schema of the local catalog (``<state_dir>/catalog.lmdb``).

One environment, named databases. Keys and values are defined here; every
other module goes through `vaultfs.catalog.Catalog`.

=========  ==========================================  ==========================================
database   key                                          value
=========  ==========================================  ==========================================
meta       ascii name (``vault_id``, ``store``,         utf-8 text
           ``format``)
meta       ``mount_restore_budget``                    JSON ``{"day": "YYYY-MM-DD", "bytes": N}``:
                                                        bytes of bands the mount asked to restore
                                                        on that UTC day ([mount]
                                                        restore_budget_per_day); another day: 0
versions   collection utf-8 + NUL + number (u64 BE)     version record JSON (`VersionInfo.to_json`)
trees      tree id (32 raw bytes)                       canonical tree encoding (`model.encode_tree`)
blobs      blob id (32 raw bytes)                       `BLOB_REF`: offset u64, size u64, band id ascii
bands      band id ascii                                `BandInfo.to_json` as JSON
files      collection utf-8 + NUL + path bytes          `FILE_CACHE`: dev, ino, size, mtime_ns,
                                                        ctime_ns (u64/i64), blob id (32 bytes)
files      collection utf-8 + 0x01 + directory path     `DIR_MEMO` (``DirMemo.pack``): listing
           (empty: the collection's root)               signature, tree id, regular files and
                                                        their bytes, then per subdirectory
                                                        name length u16, name, tree id
files      collection utf-8 + 0x01 + NUL                root tree id of the version the rows
                                                        above describe (32 bytes)
=========  ==========================================  ==========================================

``files`` is the per-collection files cache: a file whose (dev, inode, size,
mtime_ns, ctime_ns) match its row is not read again; its blob id is reused,
but only if ``blobs`` still knows that blob.

The directory rows (*memo*) let a snapshot skip rebuilding listings that did not
change: a directory whose entries' stat data hash to the recorded signature gets
the recorded tree. They describe the collection's latest version and are valid
only while the NUL row names that version's root; a snapshot that rebuilt
any listing replaces them all, in the transaction that commits it. The blobs
their trees name stay in ``blobs``: prune never deletes what the latest version
needs (it cannot be forgotten), and ``index rebuild`` writes a new catalog
without these rows.

Concurrency: one writer (a snapshot, holding the vault lock) and any number
of readers (the mount, ``versions``) at once; LMDB gives each reader a
consistent snapshot, and a reader sees a new version as soon as the writer's
transaction commits. Transactions are short and never span a network call.
"""

from __future__ import annotations

import struct

FORMAT = "1"
DATABASES = ("meta", "versions", "trees", "blobs", "bands", "files")

RESTORE_BUDGET_KEY = "mount_restore_budget"  # in ``meta``; see the table above

BLOB_REF = struct.Struct(">QQ")  # followed by the band id
FILE_CACHE = struct.Struct(">QQQqq32s")


def version_key(collection: str, number: int) -> bytes:
    return collection.encode() + b"\0" + number.to_bytes(8, "big")


def collection_prefix(collection: str) -> bytes:
    return collection.encode() + b"\0"


DIR_MEMO = struct.Struct(">32s32sQQ")  # followed by the subdirectories (see the table)
DIR_MEMO_CHILD = struct.Struct(">H")  # name length; then the name and a 32-byte tree id
DIR_MEMO_ROOT = b"\0"  # after the prefix: no directory path starts with NUL


def dir_memo_prefix(collection: str) -> bytes:
    """Collection names are plain identifiers (config.py), so 0x01 never meets a file row."""
    return collection.encode() + b"\1"
