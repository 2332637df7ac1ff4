"""``prune``: the live set, the plan (what happens to each band, and why), and its
application, including the carrier band and the store deletions a killed prune left pending.

The rules and the crash-safe order are in the docstring of `vaultfs.retention`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from vaultfs import band as bandfmt
from vaultfs import index
from vaultfs.config import Prices
from vaultfs.errors import CorruptionError
from vaultfs.keys import preview_key
from vaultfs.model import (
    BandId,
    BandInfo,
    BlobId,
    TreeId,
    VersionInfo,
    band_key,
    band_successors,
    parse_band_id,
    sidecar_key,
    to_text,
    version_key,
)
from vaultfs.retention.forget import finish_forgets
from vaultfs.retention.terms import MIN_DAYS, NS_PER_DAY, early_delete_charge, min_days, monthly_cost
from vaultfs.store import ObjectNotFound
from vaultfs.vault import Vault
from vaultfs.walk import reachable

Action = Literal[
    "delete",  # unused, minimum duration passed (or STANDARD)
    "delete-early",  # unused, deleted before its minimum duration (allow_early_delete)
    "keep-young",  # unused, but its minimum duration has not passed
    "keep-in-use",  # holds blobs of kept versions, or is a band a kept version lists
    "keep-trees",  # holds no blobs, but its catalog carries trees of kept versions
    "keep-unreadable",  # unused, but its sidecar catalog cannot be read to check its trees
]
PENDING_META = "prune_pending"


@dataclass(slots=True)
class BandPlan:
    """What prune does with one band, and why."""

    band: BandId
    collection: str
    storage_class: str
    size: int  # bytes of the band object
    created_ns: int
    age_days: float
    live_blobs: int = 0
    dead_blobs: int = 0
    live_bytes: int = 0  # uncompressed bytes of blobs kept versions need
    dead_bytes: int = 0
    sidecar_size: int = 0
    live_trees: tuple[TreeId, ...] = ()  # trees of kept versions its catalog carries
    action: Action = "keep-in-use"
    early_charge_usd: float = 0.0  # billed for deleting it now
    exists: bool = True  # the band object is on the store

    @property
    def min_days(self) -> int:
        return min_days(self.storage_class)

    @property
    def garbage_fraction(self) -> float:
        total = self.live_bytes + self.dead_bytes
        return self.dead_bytes / total if total else 0.0

    @property
    def deleted(self) -> bool:
        return self.action in ("delete", "delete-early")

    def to_json(self) -> dict[str, Any]:
        return {
            "band": self.band,
            "collection": self.collection,
            "storage_class": self.storage_class,
            "size": self.size,
            "sidecar_size": self.sidecar_size,
            "created_ns": self.created_ns,
            "age_days": round(self.age_days, 3),
            "min_days": self.min_days,
            "live_blobs": self.live_blobs,
            "dead_blobs": self.dead_blobs,
            "live_bytes": self.live_bytes,
            "dead_bytes": self.dead_bytes,
            "garbage_fraction": round(self.garbage_fraction, 4),
            "live_trees": len(self.live_trees),
            "action": self.action,
            "early_delete_charge_usd": round(self.early_charge_usd, 6),
            "exists": self.exists,
        }


@dataclass(slots=True)
class PruneResult:
    dry_run: bool
    allow_early_delete: bool
    now_ns: int
    prices: Prices  # the config's table: the charges and savings below are priced with it
    bands: list[BandPlan] = field(default_factory=list)
    version_records: list[tuple[str, int]] = field(default_factory=list)  # deleted from the store
    trees_dropped: int = 0
    blobs_dropped: int = 0
    carrier_band: BandId | None = None
    trees_rehomed: int = 0
    forgets_finished: int = 0
    deletions_resumed: int = 0
    unadopted_versions: int = 0  # dry run: committed on the store, not yet known locally
    index_objects: list[str] = field(default_factory=list)  # superseded, deleted from the store

    def of(self, *actions: Action) -> list[BandPlan]:
        return [b for b in self.bands if b.action in actions]

    @property
    def deleted(self) -> list[BandPlan]:
        return self.of("delete", "delete-early")

    @property
    def partly_used(self) -> list[BandPlan]:
        return [b for b in self.of("keep-in-use") if b.dead_blobs]

    @property
    def bytes_freed(self) -> int:
        return sum(b.size + b.sidecar_size for b in self.deleted if b.exists)

    @property
    def early_charge_usd(self) -> float:
        return sum(b.early_charge_usd for b in self.deleted)

    @property
    def young_charge_usd(self) -> float:
        """What deleting the bands kept for their minimum duration would cost now."""
        return sum(b.early_charge_usd for b in self.of("keep-young"))

    @property
    def monthly_saving_usd(self) -> float:
        return sum(monthly_cost(b.size, b.storage_class, self.prices) for b in self.deleted if b.exists)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "allow_early_delete": self.allow_early_delete,
            "now_ns": self.now_ns,
            "deleted": [b.to_json() for b in self.deleted],
            "kept_young": [b.to_json() for b in self.of("keep-young")],
            "kept_partly_used": [b.to_json() for b in self.partly_used],
            "kept_for_trees": [b.to_json() for b in self.of("keep-trees")],
            "kept_unreadable": [b.to_json() for b in self.of("keep-unreadable")],
            "bands_in_use": len(self.of("keep-in-use")),
            "bytes_freed": self.bytes_freed,
            "early_delete_charge_usd": round(self.early_charge_usd, 6),
            "early_delete_charge_if_forced_usd": round(self.young_charge_usd, 6),
            "monthly_saving_usd": round(self.monthly_saving_usd, 6),
            "version_records_deleted": [{"collection": c, "version": n} for c, n in self.version_records],
            "trees_dropped": self.trees_dropped,
            "blobs_dropped": self.blobs_dropped,
            "carrier_band": self.carrier_band,
            "trees_rehomed": self.trees_rehomed,
            "forgets_finished": self.forgets_finished,
            "deletions_resumed": self.deletions_resumed,
            "unadopted_versions": self.unadopted_versions,
            "index_objects_deleted": self.index_objects,
            "prices": {
                "as_of": self.prices.taken,
                "usd_per_gb_month": dict(self.prices.storage_per_gb_month),
                "min_days": dict(MIN_DAYS),
            },
        }


@dataclass(slots=True)
class LiveSet:
    versions: list[VersionInfo]
    trees: set[TreeId]
    blobs: set[BlobId]


def live_set(vault: Vault, versions: Iterable[VersionInfo]) -> LiveSet:
    """Every tree and blob reachable from the roots of ``versions``.

    CorruptionError when a reachable tree is not in the local catalog.
    """
    kept = list(versions)
    trees: set[TreeId] = set()
    blobs: set[BlobId] = set()
    for _, entries in reachable(vault.tree, [v.root for v in kept], trees):
        blobs.update(e.blob for e in entries or () if e.kind == "file" and e.blob is not None)
    return LiveSet(kept, trees, blobs)


def prune(
    vault: Vault,
    *,
    dry_run: bool = False,
    allow_early_delete: bool = False,
    now: Callable[[], int] = time.time_ns,
    collections: Iterable[str] = (),
) -> PruneResult:
    """Delete what no kept version needs (see the module docstring for the rules and order).

    ``collections`` names configured collections whose committed-but-unadopted
    versions must be adopted first (every collection in the catalog is too).
    Not ``dry_run``: the caller holds the vault lock.
    """
    now_ns = now()
    result = PruneResult(dry_run, allow_early_delete, now_ns, vault.config.prices)
    markers = vault.forgotten_versions()
    names = sorted(set(vault.catalog.collections()) | set(collections))
    if dry_run:
        result.unadopted_versions = count_unadopted(vault, names)
    else:
        result.forgets_finished, result.deletions_resumed = catch_up(vault, markers, names)
    kept = kept_versions(vault, markers)
    plan = _plan(vault, live_set(vault, kept), result, allow_early_delete)
    result.version_records = sorted(markers & _version_records(vault))
    if dry_run:
        result.index_objects = index.superseded(vault.store)
    else:
        _apply(vault, plan, result)
    return result


@dataclass(slots=True)
class _Drops:
    """What a prune takes out of the catalog (and the store), decided before anything is."""

    doomed: list[BandPlan]
    dead_trees: list[TreeId]
    dead_blobs: list[BlobId]
    forgotten_losses: list[BlobId]  # lost blobs no kept version names: nothing left to heal
    rehome: dict[TreeId, bytes]  # live trees whose only copy is in a doomed band

    @property
    def doomed_ids(self) -> list[BandId]:
        return sorted(b.band for b in self.doomed)


def _plan(vault: Vault, live: LiveSet, result: PruneResult, allow_early_delete: bool) -> _Drops:
    result.bands = _plan_bands(vault, live, result.now_ns, allow_early_delete)
    doomed = [b for b in result.bands if b.deleted]
    doomed_ids = {b.band for b in doomed}
    rehome: dict[TreeId, bytes] = {}
    for b in doomed:
        for tid in b.live_trees:
            raw = vault.catalog.tree_bytes(tid)
            assert raw is not None  # in the live set, so in the catalog
            rehome[tid] = raw
    drops = _Drops(
        doomed=doomed,
        dead_trees=[t for t in vault.catalog.tree_ids() if t not in live.trees],
        dead_blobs=[blob for blob, ref in vault.catalog.blob_refs() if ref.band in doomed_ids],
        forgotten_losses=[blob for blob in vault.catalog.lost_blobs() if blob not in live.blobs],
        rehome=rehome,
    )
    result.trees_dropped = len(drops.dead_trees)
    result.blobs_dropped = len(drops.dead_blobs)
    result.trees_rehomed = len(rehome)
    return drops


def _apply(vault: Vault, drops: _Drops, result: PruneResult) -> None:
    """Carry a plan out, in the order that keeps a crash safe (module docstring)."""
    if drops.rehome:
        result.carrier_band = _write_carrier(vault, drops.rehome, drops.doomed_ids)
    with vault.catalog.writer() as w:
        for blob in drops.dead_blobs:
            w.delete_blob(blob)
        for blob in drops.forgotten_losses:
            w.forget_lost(blob)
        for b in drops.doomed:
            w.delete_band(b.band)
        for tid in drops.dead_trees:
            w.delete_tree(tid)
        if drops.doomed:
            w.set_meta(PENDING_META, json.dumps(drops.doomed_ids))
    delete_band_objects(vault, drops.doomed_ids)
    if drops.doomed:
        with vault.catalog.writer() as w:
            w.delete_meta(PENDING_META)
    for c, n in result.version_records:
        vault.store.delete(version_key(c, n))
    index.publish(vault)  # a carrier band joins the consolidated index
    # Index objects older than the second-newest full one are never read again.
    result.index_objects = index.superseded(vault.store)
    for key in result.index_objects:
        vault.store.delete(key)


def catch_up(vault: Vault, markers: set[tuple[str, int]], names: Iterable[str]) -> tuple[int, int]:
    """What every changing prune or compact does first (the caller holds the lock): finish
    interrupted forgets, adopt versions committed on the store but unknown here (their
    blobs are live too), and delete the store objects an interrupted run left pending.
    Returns (forgets finished, bands deleted)."""
    forgets = finish_forgets(vault, markers)
    for name in names:
        index.adopt_committed(vault, name)
    return forgets, finish_pending(vault)


def kept_versions(vault: Vault, markers: set[tuple[str, int]]) -> list[VersionInfo]:
    """Every version in the catalog that no forgotten marker names."""
    return [v for v in vault.catalog.all_versions() if (v.collection, v.number) not in markers]


@dataclass(slots=True)
class Usage:
    """How much of each band kept versions use (`band_usage`)."""

    plans: dict[BandId, BandPlan]  # every band of the catalog, live and dead blobs counted
    listed: set[BandId]  # bands a kept version lists (its snapshot wrote them)
    needed: set[BandId]  # those, and every band holding a live blob


def band_usage(vault: Vault, live: LiveSet, now_ns: int, verb: str = "pruned") -> Usage:
    """Count each band's live and dead blobs and bytes (one pass over the blob map).

    CorruptionError when a blob kept versions need is not in the catalog (nor known lost).
    """
    infos = list(vault.catalog.bands())
    plans = {
        b.band: BandPlan(
            band=b.band,
            collection=b.collection,
            storage_class=b.storage_class,
            size=b.size,
            created_ns=b.created_ns,
            # The class's minimum counts from when the object entered it: archiving is a
            # copy onto the same key, so an archived band's clock starts at archived_ns.
            age_days=max(0.0, (now_ns - (b.archived_ns or b.created_ns)) / NS_PER_DAY),
        )
        for b in infos
    }
    # A band recompressed since its version was committed: its copy holds the version's
    # record copy and trees now, and the old one (if a killed run left it) is not needed.
    successors = band_successors(infos)
    listed: set[BandId] = {successors.get(band, band) for v in live.versions for band in v.bands}
    needed = set(listed)
    found: set[BlobId] = set()
    for blob, ref in vault.catalog.blob_refs():
        plan = plans.get(ref.band)
        if blob in live.blobs:
            found.add(blob)
            needed.add(ref.band)
            if plan is not None:
                plan.live_blobs += 1
                plan.live_bytes += ref.size
        elif plan is not None:
            plan.dead_blobs += 1
            plan.dead_bytes += ref.size
    # A blob known lost (`vaultfs.heal`) is a known loss, not catalog damage: it has no band.
    missing = live.blobs - found - set(vault.catalog.lost_blobs())
    if missing:
        raise CorruptionError(
            f"{len(missing)} blob(s) that kept versions need (e.g. {min(missing).hex()[:16]}) are "
            f"not in the local catalog: nothing {verb}; run `vaultfs check`"
        )
    return Usage(plans, listed, needed)


def _plan_bands(vault: Vault, live: LiveSet, now_ns: int, allow_early_delete: bool) -> list[BandPlan]:
    usage = band_usage(vault, live, now_ns)
    for band_id, plan in usage.plans.items():
        if band_id in usage.needed:
            continue
        info = vault.catalog.band(band_id)
        assert info is not None  # read from the catalog above, under the lock or read-only
        _judge_unused(vault, info, plan, live, allow_early_delete)
    return sorted(usage.plans.values(), key=lambda p: p.band)


def _judge_unused(
    vault: Vault, info: BandInfo, plan: BandPlan, live: LiveSet, allow_early_delete: bool
) -> None:
    """Decide the fate of a band no kept version needs (fills in ``plan``)."""
    try:
        head = vault.store.head(band_key(info.band))
        if min_days(head.storage_class) > min_days(plan.storage_class):
            plan.storage_class = head.storage_class
    except ObjectNotFound:
        plan.exists = False
    try:
        plan.sidecar_size, sidecar = read_sidecar(vault, info.band)
        carried = {TreeId(bytes.fromhex(t)) for t in sidecar.get("trees", {})}
    except (ObjectNotFound, CorruptionError, ValueError):
        if plan.exists:
            plan.action = "keep-unreadable"
            return
        carried = set()
    plan.live_trees = tuple(sorted(carried & live.trees))
    if not plan.exists:
        # Already gone: its blob entries must go before a snapshot dedups against them.
        plan.action = "delete"
        return
    if plan.live_trees and info.blobs == 0 and plan.dead_blobs == 0:
        plan.action = "keep-trees"
        return
    plan.early_charge_usd = early_delete_charge(
        plan.size, plan.storage_class, plan.age_days, vault.config.prices
    )
    if plan.age_days >= plan.min_days:
        plan.action = "delete"
    elif allow_early_delete:
        plan.action = "delete-early"
    else:
        plan.action = "keep-young"


def read_sidecar(vault: Vault, band: BandId) -> tuple[int, dict[str, Any]]:
    """A band's sidecar: its size on the store and its decoded catalog (ObjectNotFound,
    CorruptionError or ValueError when it cannot be read)."""
    size = vault.store.head(sidecar_key(band)).size
    return size, bandfmt.decode_sidecar(vault.store.get(sidecar_key(band)))


def _write_carrier(vault: Vault, trees: dict[TreeId, bytes], replaces: list[BandId]) -> BandId:
    """Upload a metadata-only band whose catalog carries ``trees``; its id."""
    band_id = bandfmt.new_band_id()
    part = vault.spool_dir / f"{band_id}.tar.zst.part"
    level = vault.config.compression_level
    writer = bandfmt.BandWriter(
        part,
        band_id,
        level=bandfmt.DEFAULT_LEVEL if level is None or level == "auto" else level,
        threads=vault.config.threads,
    )
    try:
        closed = writer.close(
            {
                "collection": "",
                "trees": {t.hex(): to_text(raw) for t, raw in sorted(trees.items())},
                "carries_trees_of": list(replaces),
            }
        )
    except BaseException:
        writer.abort()
        raise
    final = part.with_name(part.name.removesuffix(".part"))
    os.replace(part, final)  # a crash from here on: the next snapshot's spool recovery uploads it
    info = vault.upload_band(replace(closed, path=final), "")
    final.unlink(missing_ok=True)
    return info.band


def delete_band_objects(vault: Vault, bands: list[BandId]) -> None:
    """Delete each band's preview object and sidecar, then the band (a sidecar never names
    a band that is gone; a preview object is read only for a band the catalog lists)."""
    for band in bands:
        vault.store.delete(preview_key(band))
        vault.store.delete(sidecar_key(band))
        vault.store.delete(band_key(band))


def finish_pending(vault: Vault) -> int:
    """Delete the store objects an interrupted prune had already dropped from the catalog."""
    raw = vault.catalog.meta(PENDING_META)
    if raw is None:
        return 0
    bands = [parse_band_id(b, f"the local catalog's {PENDING_META} record") for b in json.loads(raw)]
    # A band id listed here may have been registered again since (a spool band
    # recovered by a snapshot): only objects the catalog does not know go.
    orphans = [b for b in bands if vault.catalog.band(b) is None]
    # A compaction's new bands must be in the consolidated index before the old ones go
    # (rung 2 would otherwise miss blobs that moved); publish logs a failure, never raises.
    index.publish(vault)
    delete_band_objects(vault, orphans)
    with vault.catalog.writer() as w:
        w.delete_meta(PENDING_META)
    return len(orphans)


def _version_records(vault: Vault) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for info in vault.store.list("versions/"):
        parts = info.key[len("versions/") :].split("/")
        if len(parts) == 2 and parts[1].endswith(".json") and parts[1][:-5].isdigit():
            out.add((parts[0], int(parts[1][:-5])))
    return out


def count_unadopted(vault: Vault, names: list[str]) -> int:
    count = 0
    for name in names:
        latest = vault.catalog.latest_version(name)
        try:
            vault.store.head(version_key(name, (latest.number if latest else 0) + 1))
        except ObjectNotFound:
            continue
        count += 1
    return count
