"""Lost blobs: learning that a band's bytes are gone, and which files that costs.

A blob is *lost* when the band that held it is missing from the store, or when the
part of the band that held it fails verification (docs/recovery.md, "Missing and
damaged bands"). Who learns it:

* every snapshot lists the store's band objects once, at its start
  (`record_missing_bands`): a band the catalog knows that the store no longer holds
  has every blob it held marked lost (``why="missing"``) and its record dropped;
* ``vaultfs check`` does the same, and with ``--read-data`` re-hashes every blob of a
  band that fails to verify, so only the blobs whose bytes fail are marked lost
  (``why="damaged"``; the band and its good blobs stay in use).

Marking a blob lost drops its row from the blob map (`CatalogWriter.mark_lost`), so
nothing reads or deduplicates against it any more and the files cache no longer
reuses it; the same transaction drops every collection's directory memo rows, so the
next snapshot looks at every file again. That snapshot reads each file whose blob is
lost, stores its bytes in a new band, and `CatalogWriter.put_blob` heals the blob:
every version naming it (by SHA-256) reads it from the new copy. What no source holds
any more stays lost; `lost_files` says which files of which versions those are.

Nothing here deletes anything on the store: a damaged band object stays where it is
(its good blobs are still read from it), and a missing one is already gone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vaultfs import band as bandfmt
from vaultfs.catalog import Catalog, CatalogWriter
from vaultfs.errors import CorruptionError
from vaultfs.model import (
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    LostBlob,
    TreeId,
    VersionInfo,
    band_key,
    parse_band_id,
)
from vaultfs.store import ObjectNotFound, ObjectStore, StoreError
from vaultfs.vault import Vault

log = logging.getLogger(__name__)

BAND_SUFFIX = ".tar.zst"
NO_MEMO_ROOT = TreeId(bytes(32))  # names no version: the memo rows it heads are never used


@dataclass(frozen=True, slots=True)
class MissingBand:
    """A band the catalog knew that the store no longer holds, and what that cost."""

    band: BandId
    blobs: int  # blobs it held that are now lost


def store_bands(store: ObjectStore) -> set[BandId]:
    """The band ids of every band object on the store (one LIST of ``bands/``)."""
    out: set[BandId] = set()
    for info in store.list("bands/"):
        if not info.key.endswith(BAND_SUFFIX):
            continue
        name = info.key[len("bands/") : -len(BAND_SUFFIX)]
        try:
            out.add(parse_band_id(name, info.key))
        except CorruptionError:
            continue  # not one of ours: `vaultfs check` reports it
    return out


def missing_bands(vault: Vault, on_store: set[BandId]) -> list[BandId]:
    """Bands the catalog knows that are not on the store. A band still being written
    (``staging``) is not missing yet, and a band whose complete copy is in the local
    cache still has its bytes (`Vault.band_cached`): neither is lost."""
    unlisted = sorted(
        b.band
        for b in vault.catalog.bands()
        if b.band not in on_store and b.state != "staging" and not vault.band_cached(b.band)
    )
    return [b for b in unlisted if _confirmed_gone(vault.store, b)]


def _confirmed_gone(store: ObjectStore, band: BandId) -> bool:
    """Whether a band absent from the listing is really gone: one HEAD of its object. A
    listing cut short (a store or proxy that pages wrongly, a prefix renamed under us)
    must never make whole bands count as lost; an error other than "not found" leaves
    the band as it is (the next run asks again)."""
    try:
        store.head(band_key(band))
    except ObjectNotFound:
        return True
    except StoreError as e:
        log.warning(
            "band %s is not in the store's listing, and asking for it failed (%s): taken as still there",
            band,
            e,
        )
        return False
    log.warning("band %s is not in the store's listing but exists: taken as still there", band)
    return False


def record_missing_bands(vault: Vault, bands: Iterable[BandId], now: int | None = None) -> list[MissingBand]:
    """Mark every blob of `bands` lost and drop the bands' records (their objects are gone:
    nothing should try to read them), in one transaction with dropping the directory
    memos. The caller holds the vault lock. Returns what was recorded."""
    wanted = set(bands)
    if not wanted:
        return []
    catalog = vault.catalog
    now = now if now is not None else time.time_ns()
    held: dict[BandId, list[BlobId]] = {b: [] for b in wanted if catalog.band(b) is not None}
    for blob, ref in catalog.iter_blobs():
        if ref.band in held:
            held[ref.band].append(blob)
    if not held:
        return []
    with catalog.writer() as w:
        for band, blobs in held.items():
            for blob in blobs:
                w.mark_lost(blob, LostBlob(band=band, why="missing", since_ns=now))
            w.delete_band(band)
        drop_dir_memos(w, catalog)
    out = [MissingBand(band, len(blobs)) for band, blobs in sorted(held.items())]
    for m in out:
        log.warning("band %s is missing from the store: %d blob(s) it held are lost", m.band, m.blobs)
    return out


def record_damaged_blobs(vault: Vault, damaged: dict[BlobId, BandId], now: int | None = None) -> int:
    """Mark lost each blob of `damaged` whose only copy is still the damaged band it maps
    to (a snapshot may have stored it again meanwhile), and drop the directory memos, in
    one transaction. The caller holds the vault lock. Returns how many were marked."""
    catalog = vault.catalog
    now = now if now is not None else time.time_ns()
    marked = [
        (blob, band)
        for blob, band in sorted(damaged.items())
        if (ref := catalog.blob(blob)) is not None and ref.band == band
    ]
    if not marked:
        return 0
    with catalog.writer() as w:
        for blob, band in marked:
            w.mark_lost(blob, LostBlob(band=band, why="damaged", since_ns=now))
        drop_dir_memos(w, catalog)
    return len(marked)


def drop_dir_memos(w: CatalogWriter, catalog: Catalog) -> None:
    """Invalidate every collection's directory memo rows: a memo lets a snapshot take a
    directory's listing over without looking at its files, so a file whose blob was just
    lost would never be read again (`vaultfs.snapshot`, trees)."""
    for collection in catalog.collections():
        w.replace_dir_memos(collection, NO_MEMO_ROOT, [])


def failing_blobs(path: Path, info: BandInfo, blobs: Iterable[tuple[BlobId, BlobRef]]) -> list[BlobId]:
    """Of `blobs` (in the band whose local copy is `path`), those whose bytes fail: a frame
    that fails its zstd checksum or a blob that fails its SHA-256. Damage costs only the
    blobs it touches, so only they are marked lost. The frame table is the catalog's (the
    band's own tail may be what is damaged)."""
    frames, coff, uoff = [], 0, 0
    for csize, usize in info.frames:
        frames.append(bandfmt.Frame(coff, csize, uoff, usize))
        coff, uoff = coff + csize, uoff + usize
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = bandfmt.BandReader(
            lambda start, length: os.pread(fd, length, start), info.size, tuple(frames), label=info.band
        )
        bad = []
        for blob, ref in blobs:
            try:
                for _ in reader.iter_blob(bandfmt.BlobLocation(blob, ref.offset, ref.size)):
                    pass
            except CorruptionError:
                bad.append(blob)
        return bad
    finally:
        os.close(fd)


# ---- which files are lost -------------------------------------------------------------------


@dataclass(slots=True)
class LostFiles:
    """The files of one version whose bytes are lost."""

    collection: str
    version: int
    paths: list[bytes] = field(default_factory=list)
    for_good: bool = False  # a snapshot of the collection ran since, and did not find them

    @property
    def name(self) -> str:
        return f"{self.collection}@v{self.version}"


def last_snapshot_ns(versions: list[VersionInfo]) -> int:
    """When a snapshot of the collection last finished: the latest version's creation, or
    the latest unchanged run that confirmed it (``verified_ns``)."""
    if not versions:
        return 0
    latest = versions[-1]
    return max([latest.created_ns, *latest.verified_ns])


def lost_files(
    vault: Vault, versions: Iterable[VersionInfo], lost: dict[BlobId, LostBlob]
) -> list[LostFiles]:
    """Every version's files whose blob is in `lost`, one entry per version (and per
    kind: still to be healed, or lost for good), paths sorted. The walk is
    `Vault.lost_files` (one walk per tree, shared across versions).

    Lost *for good*: a snapshot of the version's collection finished after the blob was
    lost, yet the blob is still lost, so that collection's source no longer holds those
    bytes (the snapshot reads every file whose blob is lost). Until such a snapshot, the
    next one may still find them.
    """
    if not lost:
        return []
    by_collection: dict[str, list[VersionInfo]] = {}
    for v in versions:
        by_collection.setdefault(v.collection, []).append(v)
    memo: dict[TreeId, list[tuple[bytes, BlobId]]] = {}
    out: list[LostFiles] = []
    for collection, vs in sorted(by_collection.items()):
        vs.sort(key=lambda v: v.number)
        seen_ns = last_snapshot_ns(vs)
        for v in vs:
            found = vault.lost_files(v.root, lost, memo)
            if not found:
                continue
            pending = LostFiles(collection, v.number)
            gone = LostFiles(collection, v.number, for_good=True)
            for path, blob in found:
                (gone if seen_ns > lost[blob].since_ns else pending).paths.append(path)
            out += [x for x in (gone, pending) if x.paths]
    return out
