"""One run of ``vaultfs check``: the local catalog against itself and the store; lost files."""

from __future__ import annotations

import time
from typing import Any

from vaultfs import band as bandfmt
from vaultfs import heal, index
from vaultfs.check.bitrot import check_source
from vaultfs.check.read_data import read_bands
from vaultfs.check.report import LIST_LIMIT, REBUILD, CheckReport, Finding
from vaultfs.config import CollectionConfig
from vaultfs.errors import CorruptionError
from vaultfs.model import (
    BadRecord,
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    LostBlob,
    VersionInfo,
    band_key,
    decode_record,
    sidecar_key,
    version_key,
)
from vaultfs.output import display_path
from vaultfs.store import ObjectNotFound
from vaultfs.vault import Vault


class Checker:
    """One run of ``vaultfs check`` over an opened vault."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.report = CheckReport()
        self.band_versions: dict[BandId, list[str]] = {}

    def problem(self, what: str, affects: list[str] | None = None, advice: str = "") -> None:
        self.report.problems.append(Finding(what, affects or [], advice))

    def affects(self, band: BandId) -> list[str]:
        return self.band_versions.get(band, [])

    def run(self, *, read_data: bool = False, source: CollectionConfig | None = None) -> CheckReport:
        catalog, store = self.vault.catalog, self.vault.store
        try:
            walk = index.verify_catalog(catalog)
        except CorruptionError as e:
            self.problem(e.message, ["every version"], REBUILD)
            return self.report
        for p in walk.problems:
            self.problem(p, advice=REBUILD)
        for (c, n), used in walk.version_bands.items():
            for b in used:
                self.band_versions.setdefault(b, []).append(f"{c}@v{n}")
        bands = {b.band: b for b in catalog.bands()}
        by_band: dict[BandId, list[tuple[BlobId, BlobRef]]] = {}
        for blob, ref in catalog.iter_blobs():
            by_band.setdefault(ref.band, []).append((blob, ref))
        listing = index.StoreListing.read(store)
        for damaged in listing.damaged:
            self.problem(
                damaged,
                [],
                "vaultfs never writes such a name under bands/: look at "
                "the object, and delete it if it is not yours",
            )
        self._bands(bands, by_band, listing)
        self._versions(walk.versions, listing)
        self._index(walk.versions, bands, listing)
        self.report.checked.update(
            versions=len(walk.versions), trees=walk.trees, file_blobs=walk.blobs, bands=len(bands)
        )
        self.report.missing_bands = heal.missing_bands(self.vault, set(listing.bands))
        if read_data:
            read_bands(self, bands, by_band, listing)
        self._lost_files(walk.versions)
        if source is not None:
            check_source(self, source)
        return self.report

    # ---- the catalog against the store -------------------------------------------------

    def _bands(
        self,
        bands: dict[BandId, BandInfo],
        by_band: dict[BandId, list[tuple[BlobId, BlobRef]]],
        listing: index.StoreListing,
    ) -> None:
        for band, info in sorted(bands.items()):
            obj = listing.bands.get(band)
            if obj is None:
                self.problem(
                    f"band {band_key(band)} is missing from the store",
                    self.affects(band),
                    "the files only it holds are lost unless their sources still exist: snapshot them again",
                )
            elif obj.size != info.size:
                self.problem(
                    f"band {band_key(band)} is {obj.size} bytes on the store, the catalog says {info.size}",
                    self.affects(band),
                    "run `vaultfs check --read-data` to see which files are damaged",
                )
            where = f"sidecar {sidecar_key(band)}"
            try:
                doc = bandfmt.decode_sidecar(store_get(self.vault, sidecar_key(band)))
            except ObjectNotFound:
                self.problem(
                    f"{where} is missing",
                    [f"rung 3 of the rebuild ladder for {band}"],
                    f"{REBUILD} (it rewrites the sidecar from the band's own catalog)",
                )
                continue
            except CorruptionError as e:
                self.problem(
                    f"{where} is damaged: {e.message}",
                    [f"rung 3 of the rebuild ladder for {band}"],
                    f"{REBUILD} (it rewrites the sidecar from the band's own catalog)",
                )
                continue
            frames = tuple((f.compressed_size, f.uncompressed_size) for f in bandfmt.sidecar_frames(doc))
            listed = {
                (bytes.fromhex(b["sha256"]), int(b["offset"]), int(b["size"])) for b in doc.get("blobs", [])
            }
            registered = {(bytes(blob), ref.offset, ref.size) for blob, ref in by_band.get(band, [])}
            if (
                doc.get("band_size") != info.size
                or frames != info.frames
                or (info.sha256 and doc.get("band_sha256") != info.sha256.hex())
                or not registered <= listed
            ):
                self.problem(
                    f"{where} disagrees with the local catalog (size, SHA-256, frames or blobs)",
                    [f"band {band}", *self.affects(band)],
                    "run `vaultfs check --read-data` to find which one is wrong",
                )

    def _versions(self, versions: dict[tuple[str, int], VersionInfo], listing: index.StoreListing) -> None:
        for (c, n), v in sorted(versions.items()):
            key = version_key(c, n)
            if (c, n) not in listing.records:
                self.problem(
                    f"version record {key} is missing from the store",
                    [f"{c}@v{n}"],
                    f"{REBUILD} (it rewrites the record)",
                )
                continue
            try:
                record = decode_record(VersionInfo.from_json, store_get(self.vault, key), key)
                same = _committed(record) == _committed(v)
            except BadRecord:
                same = False
            if not same:
                self.problem(
                    f"version record {key} is damaged (it differs from the local catalog)",
                    [f"{c}@v{n}", "rung 3 of the rebuild ladder"],
                    f"{REBUILD} (it rewrites the record)",
                )
        for c, n in sorted(listing.committed() - set(versions)):
            self.problem(
                f"{c}@v{n} is committed on the store but missing from the local catalog",
                [f"{c}@v{n}"],
                REBUILD,
            )

    def _index(
        self,
        versions: dict[tuple[str, int], VersionInfo],
        bands: dict[BandId, BandInfo],
        listing: index.StoreListing,
    ) -> None:
        vault_id = self.vault.catalog.meta("vault_id") or ""
        loaded = index.load_index(self.vault.store, vault_id, listing.forgotten)
        self.report.checked["index_objects"] = len(loaded.objects)
        for p in loaded.problems + loaded.skipped:
            self.problem(
                f"consolidated index: {p}",
                ["rung 2 of the rebuild ladder"],
                f"{REBUILD} (it writes a new full index object)",
            )
        lacking = sorted(set(versions) - set(loaded.content.versions))
        lacking_bands = sorted(set(bands) - set(loaded.content.bands))
        if lacking or lacking_bands:
            self.problem(
                f"the consolidated index lacks {len(lacking)} version(s) and "
                f"{len(lacking_bands)} band(s) of the local catalog",
                [*[f"{c}@v{n}" for c, n in lacking][:20], "rung 2 of the rebuild ladder"],
                "the next snapshot adds them, or run `vaultfs index rebuild`",
            )

    def _lost_files(self, versions: dict[tuple[str, int], VersionInfo]) -> None:
        """One problem per version with lost files (known lost, or found so by this run)."""
        catalog = self.vault.catalog
        lost = catalog.lost_blobs()
        now = time.time_ns()
        found = {blob: LostBlob(band, "damaged", now) for blob, band in self.report.damaged_blobs.items()}
        if self.report.missing_bands:
            gone = set(self.report.missing_bands)
            found.update(
                (blob, LostBlob(ref.band, "missing", now))
                for blob, ref in catalog.iter_blobs()
                if ref.band in gone
            )
        self.report.lost = heal.lost_files(self.vault, versions.values(), {**found, **lost})
        for x in self.report.lost:
            shown = ", ".join(display_path(p) for p in x.paths[:LIST_LIMIT])
            if len(x.paths) > LIST_LIMIT:
                shown += f" … and {len(x.paths) - LIST_LIMIT} more (--json lists all)"
            if x.for_good:
                self.problem(
                    f"{x.name}: {len(x.paths)} file(s) lost for good (no copy in the "
                    f"store, and its source did not hold them at the last snapshot): "
                    f"{shown}",
                    [x.name],
                    "restore them from another copy if you have one; the version's "
                    "other files restore as usual",
                )
            else:
                self.problem(
                    f"{x.name}: {len(x.paths)} file(s) whose bytes are lost: {shown}",
                    [x.name],
                    f"run `vaultfs snapshot {x.collection}`: it stores again "
                    "each one its source still holds; `vaultfs check` then names those "
                    "lost for good",
                )


def _committed(v: VersionInfo) -> dict[str, Any]:
    d = v.to_json()
    d["verified_ns"] = []
    return d


def store_get(vault: Vault, key: str) -> bytes:
    return vault.store.get(key)


def check(vault: Vault, *, read_data: bool = False, source: CollectionConfig | None = None) -> CheckReport:
    """Run the checks (see the module docstring) and return what they found."""
    return Checker(vault).run(read_data=read_data, source=source)
