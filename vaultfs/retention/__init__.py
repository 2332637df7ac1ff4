"""Retention: ``forget`` old versions, ``prune`` the bands no kept version needs,
``compact`` the warm bands that are mostly garbage, ``recompress`` the cold bands written
at a low zstd level (the last two share `rewrite`).

**forget** keeps, of each collection, the union of (docs/retention.md, "The keep rules"):

1. what each keep rule that is set keeps (`policy`, restic's ``forget --keep-*``
   semantics; every rule on its own): ``keep_versions`` the newest N; ``keep_within``
   every version created at most D before the newest one (not before now);
   ``keep_daily``, ``keep_weekly`` (ISO weeks), ``keep_monthly``, ``keep_yearly`` the
   newest version of each of the last N UTC days (weeks, ...) that have versions;
2. the latest version (so version numbers are never reused);
3. the pinned versions (below).

No rule set: nothing is forgotten (the collection is skipped). Rules on the command
line replace the collection's configured ones as a whole. Each kept version carries
its reasons (`policy.Reason`), which ``forget`` prints.

For each version it forgets, forget first writes the write-once marker
``forgotten/<C>/<N>.json`` on the store (`Vault.mark_forgotten`, If-None-Match; a
marker already there is fine), then removes the version from the local catalog. The
version record ``versions/<C>/<N>.json`` stays on the store until ``prune``; the
marker stays forever, so no rung of the index rebuild ladder (version records,
sidecars, band catalogs) can bring the version back.

**Pins** (`pins`): in a cold collection, a version holding the last copy of a file
the next listed version replaced or deleted is pinned unless an acceptance
(`vaultfs.acceptance`, written by ``accept``) covers the change. ``forget`` — and
so the snapshot's forget — never forgets a pinned version (it keeps what the rules
keep plus the pinned ones, recomputing the pins after each round of drops);
prune needs no rule of its own, since it keeps the bands of every version not
forgotten. Pins are derived from the versions and acceptances each time, never
stored.

**prune** works from the local catalog (after finishing interrupted forgets,
adopting versions committed on the store but not yet known locally with
`index.adopt_committed`, and finishing the store deletions of an interrupted
prune); at the end it calls `index.publish` so a carrier band reaches the
consolidated index:

1. *Live set*: walk every tree of every kept version (all collections) from
   its root; the blobs those trees name are live. A tree or blob a kept
   version needs that the catalog lacks stops the prune (the live set would
   be wrong; `vaultfs check` / `vaultfs index rebuild` first) — except a blob
   known lost (its band is gone: `vaultfs.heal`), which has no band to keep.
   A lost blob that no kept version names any more is forgotten.
2. *Needed bands*: the band of every live blob (by the blob map), and every
   band a kept version lists (its last band's catalog carries the version
   record and the trees that snapshot added; rungs 3–5 need it).
3. Every other band is *unused*. It is deleted only when its storage class's
   minimum duration (`MIN_DAYS`) has passed since the band entered that class
   (``BandInfo.archived_ns`` for archived bands, else ``created_ns``)
   — or at once with ``allow_early_delete``, and the early-deletion charge is
   reported either way. The class is the costlier of the catalog's
   ``storage_class`` and what the store's HEAD reports.
4. An unused band's catalog may carry trees that kept versions still use
   (an unchanged directory is stored once, in the band of the snapshot that
   first saw it). Such a band holding no blobs is kept (it is small); a band
   holding blobs is deleted after its live trees are copied into a new
   metadata-only *carrier band* (a band with no blobs whose catalog holds
   ``trees`` and ``carries_trees_of``), so the rebuild ladder still finds
   every tree. A band whose sidecar cannot be read is kept.
5. Partly used bands are never rewritten by prune (an archived one would need
   a restore); the report gives each one's garbage fraction, and ``compact``
   rewrites those of warm collections.

Deleting, in an order that is safe to kill at any point: upload the carrier
band; then one LMDB transaction drops the bands' blob entries and BandInfo,
every tree no kept version reaches, and records the band ids under the meta
key ``prune_pending``; then the sidecar and the band object are deleted on the
store (sidecar first: a sidecar never names a band that is gone); then
``prune_pending`` is cleared. A killed prune leaves only orphan objects, which
the next prune deletes from ``prune_pending``; no snapshot can dedup against
a band after its blob entries are gone. Last, the version records of
forgotten versions are deleted (their markers stay).

**compact** (`compact`) rewrites a band of a warm collection that is readable
now (STANDARD, in the catalog and on the store), that no kept version lists, and
whose garbage is at least ``min_garbage`` of its blob bytes. After the same
catching up as prune (plus uploading bands a killed run left in the spool), it
reads each live blob of those bands (SHA-256 verified) into new bands of the
same collection, the last one carrying the live trees the old catalogs carried;
uploading a new band registers its blobs (they are read from the copy from then
on). Then one transaction drops the old bands and their dead blob entries and
records them under ``prune_pending``; the index is published (the new placements
win); the old sidecars and bands are deleted; ``prune_pending`` is cleared. A
killed compact leaves at worst a complete band in the spool (uploaded by the
next run), old bands that hold less (rewritten by the next compact, or deleted by
prune once unused), or pending deletions (done by the next compact or prune,
after publishing the index). docs/retention.md has the table.

**recompress** (`recompress`) rewrites a band of a cold collection that is readable now
(as for compact), whose compressible frames below the target level (``auto_max`` or
``--level``) hold at least `MIN_LOW_SHARE` of its data bytes (the catalog's
``frame_levels``; a band written before they were recorded counts each frame that did
not shrink by 3 % as incompressible, every other one as level 3), and that holds live
blobs — also a band a kept version lists. After the same catching up as compact, each
such band gets one new band (same members and order, the target level with level 3's
window, its live trees, its catalog's ``version`` copy when that version is kept,
``recompressed_from``, its preview object's ranges in a new preview object renamed into
place in the spool just before the band); uploading it registers its blobs and records
``BandInfo.replaces``, which makes the old band *replaced*: a version listing it is taken
to list its copy (`model.band_successors`: `vaultfs versions`, prune's listed bands), and
the next recompress drops a replaced band a killed run left. Every ``COMMIT_EVERY`` bands
(and at the end) the old bands are committed, published and deleted as compact does.
Version records are never rewritten. docs/retention.md has the table of test points.

Concurrency: a caller that changes anything (not ``dry_run``) holds the vault
lock (`Vault.lock`); a dry run needs no lock and changes nothing, locally or
on the store. A mount reading a version forgotten meanwhile may find its
trees gone (EIO there); it never sees wrong bytes.
"""

from vaultfs.retention.compact import MIN_GARBAGE, CompactResult, compact
from vaultfs.retention.forget import ForgetResult, finish_forgets, forget, keep_for
from vaultfs.retention.pins import AcceptResult, Pin, accept, acceptance_json, forgettable, is_cold, pins
from vaultfs.retention.policy import Reason, kept_by_rules
from vaultfs.retention.prune import (
    PENDING_META,
    Action,
    BandPlan,
    LiveSet,
    PruneResult,
    live_set,
    prune,
)
from vaultfs.retention.recompress import MIN_LOW_SHARE, Recompressed, RecompressResult, recompress
from vaultfs.retention.rewrite import Chosen, Rewrite, RewriteResult
from vaultfs.retention.terms import (
    MIN_DAYS,
    NS_PER_DAY,
    UNKNOWN_MIN_DAYS,
    early_delete_charge,
    min_days,
    monthly_cost,
)

__all__ = [
    "MIN_DAYS",
    "MIN_GARBAGE",
    "MIN_LOW_SHARE",
    "NS_PER_DAY",
    "PENDING_META",
    "UNKNOWN_MIN_DAYS",
    "AcceptResult",
    "Action",
    "BandPlan",
    "Chosen",
    "CompactResult",
    "ForgetResult",
    "LiveSet",
    "Pin",
    "PruneResult",
    "Reason",
    "RecompressResult",
    "Recompressed",
    "Rewrite",
    "RewriteResult",
    "accept",
    "acceptance_json",
    "compact",
    "early_delete_charge",
    "finish_forgets",
    "forget",
    "forgettable",
    "is_cold",
    "keep_for",
    "kept_by_rules",
    "live_set",
    "min_days",
    "monthly_cost",
    "pins",
    "prune",
    "recompress",
]
