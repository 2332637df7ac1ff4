"""``vaultfs check``: consistency and integrity of the vault; also the tests' oracle.

Three levels, each adding to the one before:

* default — the local catalog against itself (`index.verify_catalog`: every
  record parses, trees hash to their ids, every version's trees, blobs and
  bands resolve) and against the store: every band the catalog knows exists
  with its size, its sidecar verifies and agrees (size, SHA-256, frames,
  blobs); every version record matches; no committed version is missing
  locally; the consolidated index verifies and holds every version and band.
* ``read_data`` — every readable band is read whole: its SHA-256, every zstd
  frame checksum, every member re-hashed against the catalog and the blob map.
  Archived bands that cannot be read now are listed with what it takes to read
  them (never skipped silently).
* ``source`` — the files of a collection are re-hashed against its latest
  version: same size and mtime but different bytes is *bit rot suspected*;
  anything else that differs is an ordinary change.

Every problem says what it affects (versions, rungs of the rebuild ladder) and
what to do. Files whose bytes are lost (`vaultfs.heal`) are listed per version:
those the next snapshot may still store again from their source, and those lost
for good (a snapshot ran since and did not find them).

The checks themselves read only (no lock; temporary files in the spool). What
they find lost — a band missing from the store, blobs of a damaged band that
fail their SHA-256 — is then recorded (`record`, under the vault lock, taken
briefly after the checks): the blobs are marked lost and the next snapshot
stores them again from the sources. Nothing is ever deleted on the store.

The package: `checker` (the run, the catalog against the store, lost files),
`read_data` (``--read-data``), `bitrot` (``--source``, and `rehash`: one file against a
version), `report` (what was found), `record` (writing down what was found lost), and
`scrub` (``vaultfs scrub``: the least recently verified files of cold collections,
re-read within a budget; its own command, not a level of ``check``).
"""

from vaultfs.check.checker import Checker, check, store_get
from vaultfs.check.record import record
from vaultfs.check.report import LIST_LIMIT, REBUILD, CheckReport, Finding, SourceReport

__all__ = [
    "LIST_LIMIT",
    "REBUILD",
    "CheckReport",
    "Checker",
    "Finding",
    "SourceReport",
    "check",
    "record",
    "store_get",
]
