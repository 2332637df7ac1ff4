"""The archive tier: moving verified bands to Deep Archive, and getting them back.

Band states (``BandInfo.state``), and what moves a band between them:

    standard ──archive_pending──> archived ──request_restores──> restoring
       ^                              ^                              │ refresh (S3 says ready)
       │                              └──refresh (copy expired)──  restored
       └─ small bands stay here                                      │ fetch_to_cache
                                                                   cached (whole band on the NAS)

* Only bands of **cold** collections on an **s3://** store with a non-empty
  ``[s3].archive_class`` are archived, and only bands of at least
  `MIN_ARCHIVE_SIZE`: Deep Archive bills every object for 40 KiB of metadata
  and 180 days, and a metadata-only band is never read by the mount.
* A band reaches ``standard`` only after its upload was verified (size and
  S3 SHA-256 checksum against the SHA-256 computed while writing it), so
  archiving needs no second verification; it re-checks the size, copies the
  object onto itself in the archive class, and checks the class.
* `archive_pending` runs at the end of every snapshot, under the vault lock,
  so an archiving step interrupted by a crash is finished by the next run.

Readable now: ``standard``, ``restored`` and ``cached`` bands (`model.readable_now`; which
storage classes are archive classes is decided in `vaultfs.model` too).
"""

from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from vaultfs import testpoints
from vaultfs.config import Prices
from vaultfs.errors import CorruptionError, VaultError
from vaultfs.model import BandId, BandInfo, BandState, RestoreInfo, band_key, needs_restore, readable_now
from vaultfs.output import iso_utc
from vaultfs.store import ArchiveStore
from vaultfs.vault import Vault

MIN_ARCHIVE_SIZE = 1024 * 1024
EXTEND_BEFORE_NS = 24 * 3600 * 10**9  # a restored copy expiring sooner than this is extended
_EXPIRY = re.compile(r'expiry-date="([^"]+)"')


def state_without_cache(band: BandInfo, now: int | None = None) -> BandState:
    """What a `cached` band is once its local copy is gone (evicted, or deleted by hand):
    ``restored`` while S3's temporary copy lasts, else ``archived`` in an archive class,
    else ``standard``."""
    now = now if now is not None else time.time_ns()
    r = band.restore
    if r is not None and r.ready_ns and (r.expires_ns == 0 or r.expires_ns > now):
        return "restored"
    if needs_restore(band.storage_class):
        return "archived"
    return "standard"


def _archive_store(vault: Vault) -> ArchiveStore | None:
    if not vault.config.store.startswith("s3://") or not vault.config.s3.archive_class:
        return None
    store = vault.store
    return store if isinstance(store, ArchiveStore) else None


def archive_pending(vault: Vault, now: int | None = None) -> list[BandInfo]:
    """Move every verified band of a cold collection to the archive class; return them."""
    store = _archive_store(vault)
    if store is None:
        return []
    target = vault.config.s3.archive_class
    moved = []
    tiers: dict[str, str | None] = {}
    for band in list(vault.catalog.bands()):
        if band.state != "standard" or band.size < MIN_ARCHIVE_SIZE:
            continue
        if band.collection not in tiers:  # the config's, or a hub client's recorded one
            tiers[band.collection] = vault.collection_tier(band.collection)
        if tiers[band.collection] != "cold":
            continue
        key = band_key(band.band)
        info = store.head(key)
        if info.size != band.size:
            raise CorruptionError(
                f"band {band.band} on the store is {info.size} bytes, the catalog says "
                f"{band.size}: not archived; run `vaultfs check`"
            )
        testpoints.reach("before-archive")
        store.copy_to_class(key, target)
        if store.head(key).storage_class != target:
            raise VaultError(f"band {band.band} did not move to {target}: the store refused it")
        updated = replace(
            band,
            state="archived",
            storage_class=target,
            archived_ns=now if now is not None else time.time_ns(),
        )
        with vault.catalog.writer() as w:
            w.put_band(updated)
        moved.append(updated)
    return moved


# ---- planning ------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    """What reading some files of a version would take."""

    to_restore: list[BandInfo] = field(default_factory=list)  # archived: a restore is needed
    in_flight: list[BandInfo] = field(default_factory=list)  # restoring already
    free: list[BandInfo] = field(default_factory=list)  # standard, restored or cached

    @property
    def restore_bytes(self) -> int:
        return sum(b.size for b in self.to_restore)

    def cost(self, prices: Prices, tier: str, days: int) -> float:
        """Retrieval + requests + the restored copy's storage for ``days``, in USD."""
        return prices.restore_cost(self.restore_bytes, len(self.to_restore), tier, days)


def plan(vault: Vault, bands: dict[BandId, int]) -> Plan:
    result = Plan()
    for band_id in sorted(bands):
        band = vault.catalog.band(band_id)
        if band is None:
            raise CorruptionError(f"band {band_id} is not in the catalog: run `vaultfs check`")
        if readable_now(band):
            result.free.append(band)
        elif band.state == "restoring":
            result.in_flight.append(band)
        else:
            result.to_restore.append(band)
    return result


# ---- requests and tracking ---------------------------------------------------------------


def request_restores(
    vault: Vault, bands: list[BandInfo], tier: str, days: int, now: int | None = None
) -> list[BandInfo]:
    """Ask S3 for a restored copy of each band (idempotent); return the updated records.

    A band already restoring is left alone; a restored band whose copy expires
    within a day is extended (S3 accepts a new request on a restored object).
    """
    store = _archive_store(vault)
    if store is None:
        raise VaultError("this vault's store keeps nothing archived: nothing to restore")
    now = now if now is not None else time.time_ns()
    hours = vault.config.prices.hours(tier)
    updated = []
    for band in bands:
        current = vault.catalog.band(band.band) or band
        if current.state == "restoring" or current.state in ("standard", "cached"):
            continue
        if (
            current.state == "restored"
            and current.restore is not None
            and (current.restore.expires_ns == 0 or current.restore.expires_ns - now > EXTEND_BEFORE_NS)
        ):
            continue
        store.restore(band_key(current.band), days, tier)
        info = RestoreInfo(tier=tier, requested_ns=now, expected_ns=now + hours * 3600 * 10**9, days=days)
        if current.state == "restored" and current.restore is not None:
            info = replace(current.restore, days=days, requested_ns=now)
            new = replace(current, restore=info)
        else:
            new = replace(current, state="restoring", restore=info)
        with vault.catalog.writer() as w:
            w.put_band(new)
        updated.append(new)
    return updated


def parse_restore_header(value: str | None) -> tuple[bool, int]:
    """``x-amz-restore`` → (ongoing, expiry in ns or 0)."""
    if not value:
        return False, 0
    ongoing = 'ongoing-request="true"' in value
    m = _EXPIRY.search(value)
    expires = 0
    if m:
        try:
            expires = int(email.utils.parsedate_to_datetime(m.group(1)).timestamp()) * 10**9
        except (TypeError, ValueError):
            expires = 0
    return ongoing, expires


def refresh(vault: Vault, band: BandInfo, now: int | None = None) -> BandInfo:
    """Ask the store where a restoring/restored band stands and record it."""
    store = _archive_store(vault)
    if store is None or band.state not in ("restoring", "restored", "archived"):
        return band
    now = now if now is not None else time.time_ns()
    info = store.head(band_key(band.band))
    ongoing, expires = parse_restore_header(info.restore)
    new = band
    if info.restore and not ongoing and (expires == 0 or expires > now):
        restore = band.restore or RestoreInfo("?", now, now, 0)
        new = replace(
            band,
            state="restored",
            restore=replace(
                restore,
                ready_ns=restore.ready_ns or now,
                expires_ns=expires,
            ),
        )
    elif ongoing:
        if band.state != "restoring":
            restore = band.restore or RestoreInfo("?", now, now, 0)
            new = replace(band, state="restoring", restore=restore)
    elif band.state in ("restoring", "restored"):
        new = replace(band, state="archived", restore=None)  # expired, or never asked
    if new != band:
        with vault.catalog.writer() as w:
            w.put_band(new)
    return new


def in_flight(vault: Vault) -> list[BandInfo]:
    return [b for b in vault.catalog.bands() if b.state in ("restoring", "restored")]


def fetch_to_cache(vault: Vault, band: BandInfo) -> BandInfo:
    """Download a whole readable band into ``<state_dir>/cache``, verify it, mark it cached."""
    from vaultfs.band import reopen_closed

    target = vault.cached_band_path(band.band)
    part = target.with_name(target.name + ".part")
    vault.store.get_to_file(band_key(band.band), part)
    closed = reopen_closed(part)
    if closed.sha256 != band.sha256 or closed.size != band.size:
        part.unlink(missing_ok=True)
        raise CorruptionError(f"band {band.band} fetched from the store fails its SHA-256")
    part.rename(target)
    new = replace(band, state="cached", cached=True)
    with vault.catalog.writer() as w:
        w.put_band(new)
    return new


def band_status_json(b: BandInfo) -> dict[str, Any]:
    """One band as ``vaultfs restore status --json`` and ``/.vaultfs/restores.json`` show it."""
    r = b.restore

    def t(ns: int) -> str | None:
        return iso_utc(ns) if ns else None

    return {
        "band": b.band,
        "size": b.size,
        "state": b.state,
        "storage_class": b.storage_class,
        "cached": b.cached,
        "tier": r.tier if r else None,
        "requested": t(r.requested_ns) if r else None,
        "expected_ready": t(r.expected_ns) if r else None,
        "ready_at": t(r.ready_ns) if r else None,
        "expires_at": t(r.expires_ns) if r else None,
    }
