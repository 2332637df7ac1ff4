"""``check --read-data``: every readable band read whole and verified; what damage costs.

A band that fails to verify has every blob the catalog reads from it re-hashed
(`heal.failing_blobs`): only those that fail are lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaultfs import band as bandfmt
from vaultfs import heal, index
from vaultfs.check.report import Finding  # noqa: F401
from vaultfs.errors import CorruptionError
from vaultfs.model import (
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    band_file,
    band_key,
)
from vaultfs.output import human_bytes
from vaultfs.store import ObjectArchived, ObjectNotFound, StoreError

if TYPE_CHECKING:
    from vaultfs.check.checker import Checker


def read_bands(
    c: Checker,
    bands: dict[BandId, BandInfo],
    by_band: dict[BandId, list[tuple[BlobId, BlobRef]]],
    listing: index.StoreListing,
) -> None:
    read = 0
    for band, info in sorted(bands.items()):
        obj = listing.bands.get(band)
        if obj is None:
            continue  # reported above
        cached = c.vault.cached_band_path(band)
        if cached.exists():
            verify_file(c, band, info, cached, by_band, "local cache copy")
        if not index.readable_on_store(c.vault.store, obj):
            state = c.vault.store.head(obj.key)
            c.report.not_read.append(
                {
                    "band": band,
                    "size": obj.size,
                    "storage_class": obj.storage_class,
                    "restore": state.restore,
                    "versions": c.affects(band),
                    "plan": _restore_advice(c.affects(band), obj.size, obj.storage_class),
                }
            )
            continue
        path = band_file(c.vault.spool_dir, band, ".check")
        try:
            c.vault.store.get_to_file(band_key(band), path)
            verify_file(c, band, info, path, by_band, "band")
            read += 1
        except (ObjectNotFound, ObjectArchived, StoreError) as e:
            c.problem(f"band {band}: cannot be read: {e.message}", c.affects(band))
        finally:
            path.unlink(missing_ok=True)
    c.report.checked["bands_read"] = read
    if c.report.not_read:
        c.report.not_read_cost = _restore_cost(c, c.report.not_read)


def _restore_advice(versions: list[str], size: int, storage_class: str) -> str:
    """How to make an archived band readable. Restores are asked for by version (there is
    no per-band restore): the newest version that uses the band is named."""
    what = f"({human_bytes(size)}, {storage_class})"
    if not versions:
        return (
            f"{what}: no kept version uses it (prune deletes it once its class's minimum duration has passed)"
        )
    return (
        f"{what}: `vaultfs restore start {versions[-1]}` restores it, with the other archived "
        f"bands that version needs (`vaultfs restore plan {versions[-1]}` shows them and the "
        "cost); then run `vaultfs check --read-data` again"
    )


def _restore_cost(c: Checker, not_read: list[dict[str, Any]]) -> dict[str, Any]:
    """What restoring every archived band for one read would cost, per tier (the config's
    price table, `[prices]`)."""
    prices, days = c.vault.config.prices, c.vault.config.s3.restore_days
    size = sum(int(n["size"]) for n in not_read)
    return {
        "bands": len(not_read),
        "bytes": size,
        "restore_days": days,
        "cost_usd": {
            tier: round(prices.restore_cost(size, len(not_read), tier, days), 6)
            for tier in ("Bulk", "Standard")
        },
        "prices_taken": prices.taken,
    }


def verify_file(
    c: Checker,
    band: BandId,
    info: BandInfo,
    path: Path,
    by_band: dict[BandId, list[tuple[BlobId, BlobRef]]],
    what: str,
) -> None:
    try:
        scanned = bandfmt.scan_band_file(path, band)
    except CorruptionError as e:
        if what == "band":
            damaged(c, band, info, path, by_band, e.message)
            return
        c.problem(
            f"{what} {band} is damaged: {e.message}",
            c.affects(band),
            "no damaged byte is ever served (reads fail with an error); snapshot "
            "the affected files again from their sources if they still exist",
        )
        return
    if info.sha256 and scanned.sha256 != info.sha256 and what == "band":
        # Damage no frame checksum covers (padding, the seek table): what it costs is
        # found blob by blob.
        damaged(
            c,
            band,
            info,
            path,
            by_band,
            f"SHA-256 {scanned.sha256.hex()[:16]} differs from the catalog's {info.sha256.hex()[:16]}",
        )
        return
    if info.sha256 and scanned.sha256 != info.sha256:
        c.problem(
            f"{what} {band}: SHA-256 {scanned.sha256.hex()[:16]} differs from the "
            f"catalog's {info.sha256.hex()[:16]}",
            c.affects(band),
        )
    have = set(scanned.blobs)
    lost = [blob for blob, ref in by_band.get(band, []) if (bytes(blob), ref.offset, ref.size) not in have]
    if lost:
        c.problem(
            f"{what} {band}: {len(lost)} blob(s) of the catalog are not in it with the right SHA-256",
            c.affects(band),
        )


def damaged(
    c: Checker,
    band: BandId,
    info: BandInfo,
    path: Path,
    by_band: dict[BandId, list[tuple[BlobId, BlobRef]]],
    why: str,
) -> None:
    """A band that fails to verify: re-hash every blob the catalog reads from it. Only
    those that fail are lost (recorded by `record`); if none does, the damage touches
    nothing the vault still reads from it (its lost blobs were stored again elsewhere)."""
    blobs = by_band.get(band, [])
    bad = heal.failing_blobs(path, info, blobs)
    if not bad:
        c.report.notes.append(
            f"band {band} is damaged ({why}), but every blob the catalog reads from it "
            "verifies: the damage costs nothing still in use (what it held there was "
            "stored again in other bands, or was never file content)"
        )
        return
    c.report.damaged_blobs.update((blob, band) for blob in bad)
    c.problem(
        f"band {band} is damaged: {why}; {len(bad)} of the {len(blobs)} blob(s) "
        "the catalog reads from it fail their SHA-256",
        c.affects(band),
        "no damaged byte is ever served; the files that held them are listed as "
        "lost, and the next snapshot stores again those their sources still hold",
    )
