"""The LMDB schema of the local catalog (``<state_dir>/catalog.lmdb``).

One environment, named databases. Keys and values are defined here; every
other module goes through `vaultfs.catalog.Catalog`. Every value in the table
but a tree's is followed by its 4-byte seal (see below).

=========  ==========================================  ==========================================
database   key                                          value
=========  ==========================================  ==========================================
meta       ascii name (``vault_id``, ``store``,         utf-8 text
           ``format``)
meta       ``mount_restore_budget``                    JSON ``{"day": "YYYY-MM-DD", "bytes": N}``:
                                                        bytes of bands the mount asked to restore
                                                        on that UTC day ([mount]
                                                        restore_budget_per_day); another day: 0
meta       ``restore_askers/`` + band id ascii          JSON `model.RestoreAskers`: the files (and
                                                        processes) whose opens through the mount
                                                        asked for the band's current restore
versions   collection utf-8 + NUL + number (u64 BE)     version record JSON (`VersionInfo.to_json`)
trees      tree id (32 raw bytes)                       canonical tree encoding (`model.encode_tree`)
blobs      blob id (32 raw bytes)                       `BLOB_REF`: offset u64, size u64, band id ascii
bands      band id ascii                                `BandInfo.to_json` as JSON
lost       blob id (32 raw bytes)                       `LostBlob.to_json` as JSON: a blob whose bytes
                                                        are gone (band missing or damaged); it has
                                                        no ``blobs`` row while it is here
accepted   collection utf-8 + NUL + up_to (u64 BE)      `Acceptance.to_json` as JSON: changes up to
           + at_ns (u64 BE)                             that version were intended (``vaultfs
                                                        accept``); a copy of the store's
                                                        ``accepted/`` objects (the truth:
                                                        `Vault.sync_acceptances` copies back)
files      collection utf-8 + NUL + path bytes          `FILE_CACHE`: dev, ino, size, mtime_ns,
                                                        ctime_ns (u64/i64), blob id (32 bytes);
                                                        a sparse file's row goes on with its
                                                        data map: `SPARSE_COUNT`, then
                                                        `SPARSE_EXTENT` (offset, length) each
files      collection utf-8 + 0x01 + directory path     `DIR_MEMO` (``DirMemo.pack``): listing
           (empty: the collection's root)               signature, tree id, regular files and
                                                        their bytes, then per subdirectory
                                                        name length u16, name, tree id
files      collection utf-8 + 0x01 + NUL                root tree id of the version the rows
                                                        above describe (32 bytes)
files      collection utf-8 + 0x02 + path               empty: an entry the collection's rules left
                                                        out (nothing below it was looked at), in
                                                        the run that made or confirmed the latest
                                                        version
scrub      collection utf-8 + NUL + path bytes          `SCRUB_ROW`: verified_ns (i64), content
                                                        key (32 bytes), rot_ns (i64, 0: none)
=========  ==========================================  ==========================================

``files`` is the per-collection files cache: a file whose (dev, inode, size,
mtime_ns, ctime_ns) match its row is not read again; its blob id is reused,
but only if ``blobs`` still knows that blob.

``scrub`` is local bookkeeping about the local source (`vaultfs.check.scrub`): when a
file's bytes were last re-read and hashed and matched the content named by the row's
key (a scrub, or the snapshot that read it), and when a scrub last found them differ
with unchanged size and mtime (bit rot; 0 once a later scrub finds them matching again).
The key is `model.content_key`: a dense file's blob id; for a sparse file a digest of its
blob, size and data map. A row counts only while its key is that of the latest version's
entry of that path, so a row written by a scrub that raced a snapshot never vouches for
other content (a sparse file's row written before keys covered size and map reads as
about other content: it is verified again, the safe side). Like the
files cache it is a cache of facts about this machine: ``index rebuild`` starts it
afresh (every file then counts as never verified), and a damaged row reads as absent
(costs one re-read; the next verification of that file writes it anew). Verifying the
catalog (``vaultfs check``, rung 1 of ``index rebuild``) therefore skips these rows
(`DISPOSABLE`): a damaged one is no damage to the vault, and a rebuild would only throw
away every other row with it.

The *left-out* rows say what the rules left out last time, so that the next snapshot
can tell files that come back because a rule no longer leaves them out ("now
included") from new files. Like the memo rows they are a cache: a damaged one reads as
absent, and ``index rebuild`` writes a catalog without them (the first snapshot after
it cannot tell, and counts such files as added only).

The directory rows (*memo*) let a snapshot skip rebuilding listings that did not
change: a directory whose entries' stat data hash to the recorded signature gets
the recorded tree. They describe the collection's latest version and are valid
only while the NUL row names that version's root; a snapshot that rebuilt
any listing replaces them all, in the transaction that commits it. The blobs
their trees name stay in ``blobs``: prune never deletes what the latest version
needs (it cannot be forgotten), and ``index rebuild`` writes a new catalog
without these rows.

Every value except a tree's is *sealed*: `seal` appends a CRC-32 of key and value
(4 bytes, little-endian), and every read checks it (`is_sound`) before the value is
used. A flipped bit on the NAS's disk or in its RAM therefore never becomes a wrong
offset, size, band, version or blob id: a bad record raises `CorruptionError`
("… run `vaultfs index rebuild`"), which the mount answers with EIO. The key is in
the checksum, so a value that ends up under another key is caught too. Directory
memo rows are the exception to raising: they are a disposable cache, so a bad one
reads as absent and costs one rebuilt listing. Trees need no seal: their key is
the SHA-256 of their value, and every tree read checks it. CRC-32 rather than a
keyed or cryptographic hash: the threat is media and memory errors, not an attacker
with write access to ``state_dir`` (who could rewrite the checksums too), and
CRC-32 detects every burst of up to 32 flipped bits; on the hot path (a snapshot
looks up the row and the blob of every file in a changed directory) it adds
0.6 µs per file where BLAKE2b with an 8-byte digest adds 2 µs (docs/recovery.md).

Formats (``meta`` ``format``, itself sealed): ``"1"`` had no seals; ``"2"`` seals
every value as above. A format-1 catalog is not converted in place — its records
cannot be verified, so sealing them would bless whatever damage they already hold.
Opening one says so in one line and asks for ``vaultfs index rebuild``, which
rebuilds from the store (rung 1 refuses format 1). The catalog stamps its format
itself when it creates a new environment.

Before LMDB maps ``data.mdb``, `vaultfs.catalog.records.check_data_file`
compares the file's size with the last page its newer meta page names
(``mm_last_pg``, LMDB 0.9 layout: see `LMDB_META`): touching a mapped page past
the end of a truncated file is SIGBUS, which kills the process before any
handler runs.

Concurrency: one writer (a snapshot, holding the vault lock) and any number
of readers (the mount, ``versions``) at once; LMDB gives each reader a
consistent snapshot, and a reader sees a new version as soon as the writer's
transaction commits. Transactions are short and never span a network call.
"""

from __future__ import annotations

import struct
import zlib

FORMAT = "2"
DATABASES = ("meta", "versions", "trees", "blobs", "bands", "files", "lost", "scrub", "accepted")
OPTIONAL_DATABASES = frozenset(
    {"lost", "scrub", "accepted"}
)  # absent in catalogs written before; read as empty

# Databases whose damaged records read as absent, costing only work done again: the
# catalog's verification does not count them as damage (see ``scrub`` above).
DISPOSABLE = frozenset({"scrub"})

RESTORE_BUDGET_KEY = "mount_restore_budget"  # in ``meta``; see the table above
RESTORE_ASKERS_PREFIX = "restore_askers/"  # + band id, in ``meta``; see the table above


def restore_askers_key(band: str) -> str:
    return RESTORE_ASKERS_PREFIX + band


BLOB_REF = struct.Struct(">QQ")  # followed by the band id
FILE_CACHE = struct.Struct(">QQQqq32s")
SCRUB_ROW = struct.Struct(">q32sq")  # verified_ns, content key, rot_ns
SPARSE_COUNT = struct.Struct(">Q")  # a sparse file's row goes on with its data map:
SPARSE_EXTENT = struct.Struct(">QQ")  # the number of extents, then each one


SEAL_SIZE = 4  # the CRC-32 after every value but a tree's
SEAL_RESIDUE = 0x2144DF1C  # crc32(m + crc32(m) as little-endian u32), for every m


def seal(key: bytes, value: bytes) -> bytes:
    """`value` with the CRC-32 of key + value appended, as stored."""
    return value + zlib.crc32(value, zlib.crc32(key)).to_bytes(SEAL_SIZE, "little")


def is_sound(key: bytes, stored: bytes | memoryview) -> bool:
    """Whether `stored` is a value `seal` made under `key` (one CRC pass, no copy)."""
    return len(stored) >= SEAL_SIZE and zlib.crc32(stored, zlib.crc32(key)) == SEAL_RESIDUE


# LMDB 0.9 on a 64-bit machine (native byte order): each of the two meta pages, at
# offsets 0 and page size, holds a 16-byte page header (flags at 10), then MDB_meta:
# magic u32 at 16, version u32 at 20, page size (mm_dbs[0].md_pad) u32 at 40,
# mm_last_pg u64 at 136, mm_txnid u64 at 144. LMDB reads both and uses the newer.
LMDB_META = struct.Struct("=10xH4xII16xI92xQQ")  # flags, magic, version, psize, last, txnid
LMDB_MAGIC = 0xBEEFC0DE
LMDB_DATA_VERSION = 1
LMDB_P_META = 0x08


def version_key(collection: str, number: int) -> bytes:
    return collection.encode() + b"\0" + number.to_bytes(8, "big")


def acceptance_key(collection: str, up_to: int, at_ns: int) -> bytes:
    return collection.encode() + b"\0" + up_to.to_bytes(8, "big") + at_ns.to_bytes(8, "big")


def collection_prefix(collection: str) -> bytes:
    return collection.encode() + b"\0"


DIR_MEMO = struct.Struct(">32s32sQQ")  # followed by the subdirectories (see the table)
DIR_MEMO_CHILD = struct.Struct(">H")  # name length; then the name and a 32-byte tree id
DIR_MEMO_ROOT = b"\0"  # after the prefix: no directory path starts with NUL


def dir_memo_prefix(collection: str) -> bytes:
    """Collection names are plain identifiers (config.py), so 0x01 never meets a file row."""
    return collection.encode() + b"\1"


def left_out_prefix(collection: str) -> bytes:
    """The left-out rows of a collection (0x02: as 0x01 above)."""
    return collection.encode() + b"\2"
