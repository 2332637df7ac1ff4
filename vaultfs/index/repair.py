"""Bringing the local catalog and the store back in line: adopting versions committed on
the store but missing locally (`adopt_committed`, before a snapshot or prune, and after
every rebuild), and after a rebuild rewriting damaged version records and sidecars from
verified copies and bringing the consolidated index up to date (`repair`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial

from vaultfs import band as bandfmt
from vaultfs.band import scan_band_file
from vaultfs.band.frames import frames_from_sizes
from vaultfs.catalog import Catalog
from vaultfs.errors import CorruptionError
from vaultfs.index.ladder import Ladder, RebuildReport
from vaultfs.index.listing import StoreListing
from vaultfs.index.objects import error_text, load_index, unverified
from vaultfs.index.publishing import publish_or_raise
from vaultfs.model import (
    BadRecord,
    BandInfo,
    Entry,
    TreeId,
    VersionInfo,
    band_file,
    band_key,
    decode_record,
    decode_tree,
    sidecar_key,
    version_key,
)
from vaultfs.store import ObjectArchived, ObjectNotFound
from vaultfs.vault import Vault
from vaultfs.walk import reachable

log = logging.getLogger(__name__)


def adopt_committed(vault: Vault, collection: str) -> list[str]:
    """Register versions of `collection` committed on the store but missing locally (a
    snapshot killed after its commit point, or another machine's), with the bands and blobs
    they need; the caller holds the vault lock. Costs one HEAD when there are none.
    Returns notes and problems for the log."""
    latest = vault.catalog.latest_version(collection)
    try:
        vault.store.head(version_key(collection, (latest.number if latest else 0) + 1))
    except ObjectNotFound:
        return []
    listing = StoreListing.read(vault.store)
    report = RebuildReport(rung="lmdb")
    cfg = vault.config.s3
    ladder = Ladder(
        vault.store, listing, vault.spool_dir, lambda plan: False, report, cfg.restore_days, cfg.restore_tier
    )
    adopt(vault, ladder, listing)
    for p in report.problems:
        log.warning("%s", p)
    return report.notes + report.problems


def adopt(vault: Vault, ladder: Ladder, listing: StoreListing) -> None:
    """Register versions committed on the store (by a killed run, or another machine) that
    the catalog lacks, with their trees and the bands and blobs they need."""
    catalog, report = vault.catalog, ladder.report
    have = {(c, v.number) for c in catalog.collections() for v in catalog.versions(c)}
    missing = listing.committed() - have
    if not missing:
        return
    known = {b.band for b in catalog.bands()}
    need = set(listing.bands) - known
    for vk in missing:  # their last band's catalog carries their trees
        try:
            key = listing.records[vk]
            record = decode_record(partial(VersionInfo.from_json, where=key), ladder.store.get(key), key)
            need |= {b for b in record.bands if b in listing.bands}
        except (BadRecord, ObjectNotFound):
            need |= {b for b in listing.bands if b in known}  # find its copy the hard way
    ladder.recover_bands(need - set(ladder.catalogs), "sidecars")
    content = ladder.content(ladder.versions(missing))
    now = time.time_ns()
    with catalog.writer() as w:
        for tid, enc in content.trees.items():
            w.put_tree(tid, enc)
        for band, info in content.bands.items():
            if band not in known:
                w.put_band(BandInfo.from_json({**info.to_json(), "created_ns": now}))
                for blob, ref in content.blobs.items():
                    if ref.band == band and catalog.blob(blob) is None:
                        w.put_blob(blob, ref)
    for vk, v in sorted(content.versions.items()):
        walk_lacks = _lacks_in_catalog(catalog, v.root)
        if walk_lacks:
            report.problems.append(
                f"{vk[0]}@v{vk[1]} (committed on the store) cannot be "
                f"adopted: it lacks {', '.join(walk_lacks[:5])}"
            )
            continue
        with catalog.writer() as w:
            w.put_version(v)
        report.notes.append(f"adopted {vk[0]}@v{vk[1]}, committed on the store but missing locally")


def _lacks_in_catalog(catalog: Catalog, root: TreeId) -> list[str]:
    lacks: list[str] = []

    def load(tid: TreeId) -> tuple[Entry, ...] | None:
        raw = catalog.tree_bytes(tid)
        return None if raw is None else decode_tree(raw)

    for tid, entries in reachable(load, [root]):
        if entries is None:
            lacks.append(f"tree {tid.hex()[:16]}")
            continue
        lacks += [
            f"blob {e.blob.hex()[:16]}"
            for e in entries
            if e.kind == "file" and e.blob is not None and e.hardlink is None and catalog.blob(e.blob) is None
        ]
    return lacks


def repair(vault: Vault, report: RebuildReport, listing: StoreListing) -> None:
    """After a rebuild: rewrite damaged version records and sidecars from verified copies,
    and bring the consolidated index up to date (in full when its chain is damaged)."""
    store, catalog = vault.store, vault.catalog
    for c in catalog.collections():
        for v in catalog.versions(c):
            if (c, v.number) in listing.forgotten:
                continue
            key = version_key(c, v.number)
            try:
                current = decode_record(VersionInfo.from_json, store.get(key), key)
                ok = unverified(current) == unverified(v)
            except (BadRecord, ObjectNotFound):
                ok = False
            if not ok:
                store.put(key, json.dumps(unverified(v).to_json(), indent=1, sort_keys=True).encode())
                report.repairs.append(f"rewrote {key} from the verified copy")
    for info in list(catalog.bands()):
        try:
            bandfmt.decode_sidecar(store.get(sidecar_key(info.band)))
            continue
        except (CorruptionError, ObjectNotFound):
            pass
        if info.band in report.damaged_bands:  # a sidecar must describe an intact band
            report.notes.append(f"the sidecar of the damaged band {info.band} is not rewritten")
            continue
        try:
            data = _sidecar_from_band(vault, info)
        except (CorruptionError, ObjectNotFound, ObjectArchived) as e:
            # The catalog is whole; the band's own damage is for `check --read-data`.
            report.warnings.append(
                f"sidecar of band {info.band} is damaged and cannot be "
                f"rewritten now: {error_text(e)} (`vaultfs check --read-data` "
                "tells what the damage affects)"
            )
            continue
        store.put(sidecar_key(info.band), data)
        report.repairs.append(f"rewrote {sidecar_key(info.band)} from the band's own catalog")
    loaded = load_index(store, catalog.meta("vault_id") or "", listing.forgotten)
    have = {(c, v.number) for c in catalog.collections() for v in catalog.versions(c)}
    full = bool(loaded.problems or loaded.skipped or not have <= set(loaded.content.versions))
    for p in publish_or_raise(vault, full=full):
        report.repairs.append(
            f"wrote {p.key} ({p.versions} version(s), {p.bands} band(s), {p.trees} tree(s))"
        )


def _sidecar_from_band(vault: Vault, info: BandInfo) -> bytes:
    """Sidecar bytes rebuilt from the band itself (read whole when its SHA-256 is unknown;
    the catalog then records it)."""
    store = vault.store
    if info.sha256:
        key = band_key(info.band)
        reader = bandfmt.BandReader(lambda s, n: store.get_range(key, s, n), info.size, label=info.band)
        return bandfmt.encode_sidecar(
            reader.catalog_bytes, info.size, info.sha256, frames_from_sizes(info.frames)
        )
    path = band_file(vault.spool_dir, info.band, ".scan")
    try:
        store.get_to_file(band_key(info.band), path)
        scanned = scan_band_file(path, info.band)
        fd = os.open(path, os.O_RDONLY)
        try:
            catalog_bytes = bandfmt.BandReader(
                lambda s, n: os.pread(fd, n, s), scanned.size, label=info.band
            ).catalog_bytes
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    fixed = BandInfo.from_json({**info.to_json(), "sha256": scanned.sha256.hex()})
    with vault.catalog.writer() as w:
        w.put_band(fixed)
    return bandfmt.encode_sidecar(catalog_bytes, fixed.size, fixed.sha256, frames_from_sizes(fixed.frames))
