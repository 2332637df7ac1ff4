"""The rebuild ladder's rungs 3-5: every band's catalog recovered from the store, band by
band, and the versions committed there.

Rung 3 reads a band's sidecar, rung 4 the catalog at the end of the band (a ranged GET),
rung 5 the whole band (`band.scan_band_file`, salvaging around damage). A band falls to
the next rung on its own when one fails; an archived band is restored first, after the
plan is confirmed. `Ladder` also finds which blobs the versions name that no readable
band holds (lost blobs, each with the band a surviving record places it in).
`RebuildReport` is what a rebuild (or an adoption) tells its caller.
"""

from __future__ import annotations

import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from vaultfs import band as bandfmt
from vaultfs.band import scan_band_file, sidecar_blobs
from vaultfs.band.frames import frames_from_sizes
from vaultfs.errors import CorruptionError
from vaultfs.index.listing import StoreListing, band_state, readable_on_store
from vaultfs.index.objects import IndexContent, VersionKey, error_text, unverified
from vaultfs.index.verify import content_gaps
from vaultfs.model import (
    RECORD_ERRORS,
    BadRecord,
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    LostBlob,
    TreeId,
    VersionInfo,
    band_file,
    band_key,
    decode_record,
    parse_band_id,
    sidecar_key,
    tree_id,
    version_key,
)
from vaultfs.store import ObjectArchived, ObjectInfo, ObjectNotFound, ObjectStore
from vaultfs.store.base import StoreError

# What reading one band's catalog on some rung may raise: damage, a vanished or archived
# object, a malformed record in it, a broken tar stream. The band falls to the next rung.
_FETCH_ERRORS: tuple[type[Exception], ...] = (
    CorruptionError,
    ObjectNotFound,
    ObjectArchived,
    tarfile.TarError,
    *RECORD_ERRORS,
)
_SIDECAR_ERRORS: tuple[type[Exception], ...] = (CorruptionError, ObjectNotFound, *RECORD_ERRORS)

RUNGS = ("lmdb", "index", "sidecars", "tails", "scan")


@dataclass(slots=True)
class BandCatalog:
    """One band's catalog as recovered by some rung."""

    info: BandInfo
    blobs: list[tuple[bytes, int, int]]  # (sha256, offset, size)
    trees: dict[TreeId, bytes]
    version: VersionInfo | None
    source: str  # "sidecar", "tail" or "scan"
    catalog_doc: dict[str, Any] | None = None
    damage: list[str] = field(default_factory=list)  # a salvage scan: what is damaged
    lost: list[tuple[bytes, int, int]] = field(default_factory=list)  # listed, not recovered


@dataclass(slots=True)
class RebuildReport:
    rung: str  # the rung the catalog came from
    why: list[str] = field(default_factory=list)  # why the rungs above were not used
    notes: list[str] = field(default_factory=list)  # fallbacks, top-ups, repairs
    problems: list[str] = field(default_factory=list)  # what could not be recovered
    plan: list[str] = field(default_factory=list)  # archived bands that need a restore
    versions: list[str] = field(default_factory=list)  # every version the catalog holds at the end
    bands: dict[str, str] = field(default_factory=dict)  # band -> source of its catalog
    repairs: list[str] = field(default_factory=list)
    lost: dict[BlobId, LostBlob] = field(default_factory=dict)  # recorded as lost
    lost_files: dict[str, list[str]] = field(default_factory=dict)  # version -> paths
    damaged_bands: dict[str, list[str]] = field(default_factory=dict)  # band -> damage
    warnings: list[str] = field(default_factory=list)  # the catalog is whole, but ...

    def to_json(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "why": self.why,
            "notes": self.notes,
            "problems": self.problems,
            "restore_plan": self.plan,
            "versions": self.versions,
            "band_sources": self.bands,
            "repairs": self.repairs,
            "lost_blobs": {b.hex(): lb.to_json() for b, lb in sorted(self.lost.items())},
            "lost_files": self.lost_files,
            "damaged_bands": self.damaged_bands,
            "warnings": self.warnings,
        }


Confirm = Callable[[list[str]], bool]


class Ladder:
    """Recovers band catalogs and versions from the store, rung by rung (3, 4, 5)."""

    def __init__(
        self,
        store: ObjectStore,
        listing: StoreListing,
        work_dir: Path,
        confirm: Confirm,
        report: RebuildReport,
        restore_days: int,
        restore_tier: str,
    ) -> None:
        self.store, self.listing, self.work_dir = store, listing, work_dir
        self.confirm, self.report = confirm, report
        self.restore_days, self.restore_tier = restore_days, restore_tier
        self.catalogs: dict[BandId, BandCatalog] = {}
        self._orphans: dict[BandId, BandCatalog] | None = None

    def orphans(self) -> dict[BandId, BandCatalog]:
        """Catalogs of bands whose object is gone from the store but whose sidecar is
        still there: they say which band held a lost blob, and carry trees and version
        copies (the last band of a snapshot holds them) that nothing else may have."""
        if self._orphans is None:
            self._orphans = {}
            for band in sorted(set(self.listing.sidecars) - set(self.listing.bands)):
                try:
                    self._orphans[band] = _from_sidecar(self.store, band, None)
                except _SIDECAR_ERRORS as e:
                    self.report.notes.append(
                        f"sidecar of the missing band {band} is not usable either: {error_text(e)}"
                    )
        return self._orphans

    def recover_bands(self, bands: Iterable[BandId], first: str) -> None:
        """Get the catalog of each band, starting at rung `first` (sidecars/tails/scan)."""
        order = RUNGS[RUNGS.index(first) :]
        deferred: list[tuple[BandId, str]] = []
        for band in sorted(bands):
            obj = self.listing.bands.get(band)
            failures: list[str] = []
            for rung in order:
                if rung != "sidecars" and obj is not None and not readable_on_store(self.store, obj):
                    deferred.append((band, rung))
                    break
                try:
                    self.catalogs[band] = self._fetch(band, rung, obj)
                    break
                except _FETCH_ERRORS as e:
                    failures.append(f"{rung}: {error_text(e)}")
            if band in self.catalogs and failures:
                self.report.notes.append(
                    f"band {band}: catalog from its {self.catalogs[band].source} because "
                    + "; ".join(failures)
                )
            elif band not in self.catalogs and not any(d[0] == band for d in deferred):
                self.report.problems.append(
                    f"band {band}: no catalog recovered (" + "; ".join(failures) + ")"
                )
        if deferred:
            self._archived(deferred)

    def _archived(self, deferred: list[tuple[BandId, str]]) -> None:
        total = sum(self.listing.bands[b].size for b, _ in deferred)
        plan = [
            f"restore {len(deferred)} archived band(s), {total} bytes, tier "
            f"{self.restore_tier}, kept {self.restore_days} days, to read their catalogs:"
        ]
        plan += [
            f"  {band_key(b)} ({self.listing.bands[b].size} bytes, {self.listing.bands[b].storage_class})"
            for b, _ in deferred
        ]
        self.report.plan = plan
        if not self.confirm(plan):
            self.report.problems += [
                f"band {b}: archived; not restored (pass --yes to restore)" for b, _ in deferred
            ]
            return
        for band, rung in deferred:
            key = band_key(band)
            try:
                self.store.restore(key, self.restore_days, self.restore_tier)  # type: ignore[attr-defined]
                info = self.store.head(key)
            except StoreError as e:
                self.report.problems.append(f"band {band}: restore failed: {e.message}")
                continue
            if band_state(info) != "restored":
                self.report.problems.append(
                    f"band {band}: restore requested; run `vaultfs index rebuild` again "
                    "when it is ready (`vaultfs restore status`)"
                )
                continue
            try:
                self.catalogs[band] = self._fetch(band, rung, info)
            except _FETCH_ERRORS as e:
                self.report.problems.append(f"band {band}: {rung}: {error_text(e)}")

    def _fetch(self, band: BandId, rung: str, obj: ObjectInfo | None) -> BandCatalog:
        if rung == "sidecars":
            return _from_sidecar(self.store, band, obj)
        if obj is None:
            raise ObjectNotFound(f"band object {band_key(band)} is not on the store")
        if rung == "tails":
            return _from_tail(self.store, band, obj)
        return _from_scan(self.store, band, obj, self.work_dir)

    def versions(self, wanted: set[VersionKey]) -> dict[VersionKey, VersionInfo]:
        """The committed versions in `wanted`: the record, checked against the copy in its
        last band's catalog (which wins: it is checksummed)."""
        copies = {
            (c.version.collection, c.version.number): c.version
            for c in [*self.orphans().values(), *self.catalogs.values()]
            if c.version is not None
        }
        out: dict[VersionKey, VersionInfo] = {}
        for vk in sorted(wanted):
            record: VersionInfo | None = None
            err = ""
            try:
                key = self.listing.records[vk]
                record = decode_record(partial(VersionInfo.from_json, where=key), self.store.get(key), key)
            except BadRecord as e:
                err = f"does not parse ({e.reason})"
            except ObjectNotFound:
                err = "vanished"
            copy = copies.get(vk)
            if copy is not None and record is not None and unverified(record) != copy:
                err = "differs from the copy in its band's catalog"
            if err:
                where = f"version record {version_key(*vk)}"
                if copy is not None:
                    self.report.notes.append(f"{where} {err}: using the band catalog's copy")
                    self.report.repairs.append(f"rewrite {version_key(*vk)}")
                    out[vk] = copy
                else:
                    self.report.problems.append(f"{where} {err}, and no band catalog has a copy")
                continue
            assert record is not None
            out[vk] = record
        return out

    def content(self, versions: dict[VersionKey, VersionInfo]) -> IndexContent:
        content = IndexContent()
        content.versions = dict(versions)
        for band, cat in self.catalogs.items():
            content.bands[band] = cat.info
            for sha, offset, size in cat.blobs:
                content.blobs.setdefault(BlobId(sha), BlobRef(band, offset, size))
            content.trees.update(cat.trees)
        return content

    def lost_blobs(
        self, content: IndexContent, indexed: IndexContent | None, versions: Iterable[VersionKey]
    ) -> dict[BlobId, LostBlob]:
        """The blobs `versions` name that no readable band holds, each with the band a
        surviving record (a damaged band's catalog, a missing band's sidecar, the index
        objects) says held it, and why: "missing" when that band object is gone,
        "damaged" when it is there but its bytes do not verify. A blob such a record
        places in a band that is there is first read from it (a member whose tar header
        was in a damaged frame, while its content is intact): when its bytes verify, it
        goes into `content`'s blob map instead."""
        gaps = content_gaps(content)
        wanted = {blob for vk in versions for blob in gaps[vk][1]}
        if not wanted:
            return {}
        said: dict[BlobId, BlobRef] = {}
        for band, cat in [*self.catalogs.items(), *self.orphans().items()]:
            for sha, offset, size in [*cat.lost, *cat.blobs]:
                said.setdefault(BlobId(sha), BlobRef(band, offset, size))
        if indexed is not None:
            for blob, ref in indexed.blobs.items():
                said.setdefault(blob, ref)
        damaged = any(c.damage for c in self.catalogs.values())
        now = time.time_ns()
        out: dict[BlobId, LostBlob] = {}
        for blob in sorted(wanted):
            place = said.get(blob)
            if place is not None and self._read_back(blob, place):
                content.blobs[blob] = place
                continue
            holder = place.band if place is not None else ""
            if holder:
                why = "damaged" if holder in self.listing.bands else "missing"
            else:
                why = "damaged" if damaged else "missing"
            out[blob] = LostBlob(holder, why, now)
        return out

    def _read_back(self, blob: BlobId, ref: BlobRef) -> bool:
        """Whether `blob` can be read from where `ref` says, its SHA-256 verified."""
        cat = self.catalogs.get(ref.band)
        if cat is None or not cat.info.frames:
            return False
        key = band_key(ref.band)
        reader = bandfmt.BandReader(
            lambda s, n: self.store.get_range(key, s, n),
            cat.info.size,
            frames_from_sizes(cat.info.frames),
            label=ref.band,
        )
        try:
            reader.read_blob(bandfmt.BlobLocation(blob, ref.offset, ref.size))
        except (CorruptionError, ObjectNotFound, ObjectArchived):
            return False
        return True


def _catalog_parts(doc: dict[str, Any], band: BandId) -> tuple[dict[TreeId, bytes], VersionInfo | None]:
    parse_band_id(doc.get("band"), f"the catalog of band {band}")
    if doc.get("band") != band:
        raise CorruptionError(f"catalog names band {doc.get('band')!r}, not {band}")
    trees: dict[TreeId, bytes] = {}
    for tid_hex, text in (doc.get("trees") or {}).items():
        enc = text.encode("utf-8", "surrogateescape")
        tid = TreeId(bytes.fromhex(tid_hex))
        if tree_id(enc) != tid:
            raise CorruptionError(f"tree {tid_hex[:16]} in the catalog does not hash to its id")
        trees[tid] = enc
    version = (
        VersionInfo.from_json(doc["version"], f"the catalog of band {band}") if doc.get("version") else None
    )
    return trees, version


def _band_info(
    band: BandId,
    obj: ObjectInfo | None,
    size: int,
    sha256: bytes,
    frames: tuple[tuple[int, int], ...],
    doc: dict[str, Any],
    blobs: int,
) -> BandInfo:
    if obj is not None and obj.size != size:
        raise CorruptionError(f"band {band} is {obj.size} bytes on the store, its catalog says {size}")
    levels = bandfmt.frame_levels(doc, band)
    return BandInfo(
        band=band,
        state=band_state(obj) if obj is not None else "standard",
        size=size,
        sha256=sha256,
        uncompressed_size=sum(u for _, u in frames),
        frames=frames,
        storage_class=obj.storage_class if obj is not None else "STANDARD",
        collection=str(doc.get("collection", "")),
        blobs=blobs,
        created_ns=_band_time(band),
        levels=(min(levels), max(levels)) if levels else None,
        replaces=tuple(
            parse_band_id(b, f"the catalog of band {band}") for b in doc.get("recompressed_from") or ()
        ),
    )


def _band_time(band: str) -> int:
    try:
        dt = datetime.strptime(band.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return 0
    return int(dt.timestamp()) * 10**9


def _from_sidecar(store: ObjectStore, band: BandId, obj: ObjectInfo | None) -> BandCatalog:
    doc = bandfmt.decode_sidecar(store.get(sidecar_key(band)))
    frames = tuple((f.compressed_size, f.uncompressed_size) for f in bandfmt.sidecar_frames(doc))
    blobs = sidecar_blobs(doc)
    trees, version = _catalog_parts(doc, band)
    info = _band_info(
        band, obj, int(doc["band_size"]), bytes.fromhex(doc["band_sha256"]), frames, doc, len(blobs)
    )
    return BandCatalog(info, blobs, trees, version, "sidecar", doc)


def _from_tail(store: ObjectStore, band: BandId, obj: ObjectInfo) -> BandCatalog:
    key = band_key(band)
    reader = bandfmt.BandReader(lambda s, n: store.get_range(key, s, n), obj.size, label=band)
    doc = reader.catalog
    blobs = [(loc.sha256, loc.offset, loc.size) for _, loc in reader.blobs()]
    trees, version = _catalog_parts(doc, band)
    frames = tuple((f.compressed_size, f.uncompressed_size) for f in reader.frames)
    # The band's whole SHA-256 is not in its own catalog; a scan or `check --read-data` has it.
    info = _band_info(band, obj, obj.size, b"", frames, doc, len(blobs))
    return BandCatalog(info, blobs, trees, version, "tail", dict(doc))


def _from_scan(store: ObjectStore, band: BandId, obj: ObjectInfo, work_dir: Path) -> BandCatalog:
    """Read the whole band: re-hash every member of its tar stream; the last is the catalog."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = band_file(work_dir, band, ".scan")
    try:
        store.get_to_file(band_key(band), path)
        scanned = scan_band_file(path, band, salvage=True)
    finally:
        path.unlink(missing_ok=True)
    if not scanned.frames:
        raise CorruptionError(f"band {band}: no part of it can be read (" + "; ".join(scanned.damage) + ")")
    doc = scanned.catalog or {}
    trees, version = _catalog_parts(doc, band) if scanned.catalog else (scanned.trees, None)
    # A damaged band's SHA-256 is not recorded: it would vouch for the damage.
    info = _band_info(
        band,
        obj,
        scanned.size,
        b"" if scanned.damage else scanned.sha256,
        scanned.frames,
        doc,
        len(scanned.blobs),
    )
    return BandCatalog(
        info, scanned.blobs, trees, version, "scan", scanned.catalog, scanned.damage, scanned.lost
    )
