"""The consolidated index on the store, and the rebuild ladder (docs/recovery.md).

The package, one concern per module (lower ones first; each imports only those above it
in this list):

* `objects`: index objects on the store: keys, bytes (magic, SHA-256, zstd, JSON),
  `IndexContent`, loading the newest verifiable full object plus its deltas
  (`load_index`), listing them, `superseded`. The format is documented there.
* `listing`: what the store holds (`StoreListing`: version records, forgotten markers,
  bands, sidecars) and whether a listed band object can be read now.
* `publishing`: `publish`, bringing the index objects up to date after a snapshot
  (deltas, and a full object every `CONSOLIDATE_AFTER`); `IndexState`, what of the local
  catalog is already published.
* `verify`: `verify_catalog` (rung 1, and ``vaultfs check``), `check_content` and
  `content_gaps` (what a version lacks in recovered content), `lost_paths`.
* `ladder`: rungs 3-5, recovering each band's catalog from its sidecar, its tail or a
  scan (`Ladder`), the versions committed on the store, lost blobs; `RebuildReport`.
* `repair`: `adopt_committed` (versions committed on the store but missing locally) and,
  after a rebuild, rewriting damaged version records and sidecars and the index.
* `rebuilding`: `rebuild`, walking the ladder rung by rung, installing the result in a
  fresh LMDB, setting a damaged local catalog aside.

Scanning a band file (`scan_band_file`) is band format: `vaultfs.band.scan`. The modules
that hold `publish` and `rebuild` are called `publishing` and `rebuilding` so that
``index.publish`` and ``index.rebuild`` stay the functions (a submodule of the same name
would shadow them: ``import vaultfs.index.publish as m`` would give the function).

Forgotten versions: ``forgotten/<collection>/<n>.json`` markers (written by
``forget``) hide a version on every rung of the ladder. Acceptances
(``accepted/``, `vaultfs.acceptance`) are on no rung: `rebuild` copies those the
catalog lacks from the store at the end, whichever rung it used.

The ladder
----------
`rebuild` builds a fresh LMDB next to the live one and swaps it in. Rungs:
1 the local LMDB (verified: every record parses, trees hash to their ids,
every version's trees, blobs and bands resolve, no committed version is
missing); 2 the index objects; 3 band sidecars + version records; 4 the
catalog at the end of each band (ranged GET; archived bands need a restore,
planned and confirmed first); 5 a full read of each band's tar stream,
re-hashing every member (a damaged band is salvaged: every member before and
after the damage that verifies is kept). A rung is used only when the ones
above fail verification; a band whose sidecar is bad falls to rung 4 and then
5 on its own, and versions committed after the newest index object are topped
up from their sidecars. On rungs 3-5 a version whose trees exist somewhere is
installed even when some of its files' blobs are in no readable band: those
blobs are recorded as lost (`Catalog.lost_blobs`) and reported. After a
rebuild, damaged version records and sidecars are rewritten from verified
copies and the consolidated index is brought up to date (a new full object
when the old chain is unusable).

Concurrency: callers hold the vault lock (`Vault.lock`) for `publish` and
`rebuild`; `load_index` and `verify_catalog` only read.
"""

from vaultfs.index.ladder import RUNGS, BandCatalog, Confirm, RebuildReport
from vaultfs.index.listing import FORGOTTEN_PREFIX, StoreListing, band_state, readable_on_store
from vaultfs.index.objects import (
    INDEX_FORMAT,
    INDEX_MAGIC,
    INDEX_PREFIX,
    IndexContent,
    LoadedIndex,
    VersionKey,
    decode_index_object,
    encode_index_object,
    index_key,
    list_index,
    load_index,
    superseded,
)
from vaultfs.index.publishing import CONSOLIDATE_AFTER, Published, publish
from vaultfs.index.rebuilding import rebuild
from vaultfs.index.repair import adopt_committed
from vaultfs.index.verify import CatalogWalk, check_content, content_gaps, lost_paths, verify_catalog

__all__ = [
    "CONSOLIDATE_AFTER",
    "FORGOTTEN_PREFIX",
    "INDEX_FORMAT",
    "INDEX_MAGIC",
    "INDEX_PREFIX",
    "RUNGS",
    "BandCatalog",
    "CatalogWalk",
    "Confirm",
    "IndexContent",
    "LoadedIndex",
    "Published",
    "RebuildReport",
    "StoreListing",
    "VersionKey",
    "adopt_committed",
    "band_state",
    "check_content",
    "content_gaps",
    "decode_index_object",
    "encode_index_object",
    "index_key",
    "list_index",
    "load_index",
    "lost_paths",
    "publish",
    "readable_on_store",
    "rebuild",
    "superseded",
    "verify_catalog",
]
