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
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultfs import band as bandfmt
from vaultfs import heal, index
from vaultfs.config import CollectionConfig, Config
from vaultfs.errors import CorruptionError, LockedError, UsageError, VaultError
from vaultfs.model import (
    BadRecord,
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    Entry,
    LostBlob,
    TreeId,
    VersionInfo,
    band_file,
    band_key,
    decode_record,
    sidecar_key,
    to_text,
    version_key,
)
from vaultfs.output import display_path
from vaultfs.store import ObjectArchived, ObjectNotFound, StoreError
from vaultfs.vault import Vault


@dataclass(slots=True)
class Finding:
    what: str
    affects: list[str] = field(default_factory=list)
    advice: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "affects": self.affects, "advice": self.advice}


@dataclass(slots=True)
class SourceReport:
    collection: str
    version: int | None = None
    files: int = 0
    hashed: int = 0
    bitrot: list[str] = field(default_factory=list)  # same size and mtime, other bytes
    modified: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "files": self.files,
            "hashed": self.hashed,
            "bitrot_suspected": self.bitrot,
            "modified": self.modified,
            "added": self.added,
            "deleted": self.deleted,
            "unreadable": self.unreadable,
        }


@dataclass(slots=True)
class CheckReport:
    problems: list[Finding] = field(default_factory=list)
    not_read: list[dict[str, Any]] = field(default_factory=list)  # archived bands
    checked: dict[str, int] = field(default_factory=dict)
    source: SourceReport | None = None
    lost: list[heal.LostFiles] = field(default_factory=list)  # files whose bytes are lost
    notes: list[str] = field(default_factory=list)  # worth knowing, not problems
    missing_bands: list[BandId] = field(default_factory=list)  # to record (`record`)
    damaged_blobs: dict[BlobId, BandId] = field(default_factory=dict)  # to record

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
            "not_read": self.not_read,
            "checked": self.checked,
            "source": self.source.to_json() if self.source else None,
            "lost": [
                {
                    "collection": x.collection,
                    "version": x.version,
                    "for_good": x.for_good,
                    "paths": [to_text(p) for p in x.paths],
                }
                for x in self.lost
            ],
            "notes": self.notes,
        }


REBUILD = "run `vaultfs index rebuild`"
LIST_LIMIT = 20  # paths named in one problem line (--json lists all)


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
            self._read_data(bands, by_band, listing)
        self._lost_files(walk.versions)
        if source is not None:
            self._source(source)
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

    # ---- reading the data --------------------------------------------------------------

    def _read_data(
        self,
        bands: dict[BandId, BandInfo],
        by_band: dict[BandId, list[tuple[BlobId, BlobRef]]],
        listing: index.StoreListing,
    ) -> None:
        read = 0
        cfg = self.vault.config.s3
        for band, info in sorted(bands.items()):
            obj = listing.bands.get(band)
            if obj is None:
                continue  # reported above
            cached = self.vault.cached_band_path(band)
            if cached.exists():
                self._verify_file(band, info, cached, by_band, "local cache copy")
            if not index.readable_on_store(self.vault.store, obj):
                state = self.vault.store.head(obj.key)
                self.report.not_read.append(
                    {
                        "band": band,
                        "size": obj.size,
                        "storage_class": obj.storage_class,
                        "restore": state.restore,
                        "versions": self.affects(band),
                        "plan": (
                            f"restore {band_key(band)} ({obj.size} bytes, "
                            f"{obj.storage_class}) with tier {cfg.restore_tier} for "
                            f"{cfg.restore_days} days (`vaultfs restore start`), then run "
                            "`vaultfs check --read-data` again"
                        ),
                    }
                )
                continue
            path = band_file(self.vault.spool_dir, band, ".check")
            try:
                self.vault.store.get_to_file(band_key(band), path)
                self._verify_file(band, info, path, by_band, "band")
                read += 1
            except (ObjectNotFound, ObjectArchived, StoreError) as e:
                self.problem(f"band {band}: cannot be read: {e.message}", self.affects(band))
            finally:
                path.unlink(missing_ok=True)
        self.report.checked["bands_read"] = read

    def _verify_file(
        self,
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
                self._damaged(band, info, path, by_band, e.message)
                return
            self.problem(
                f"{what} {band} is damaged: {e.message}",
                self.affects(band),
                "no damaged byte is ever served (reads fail with an error); snapshot "
                "the affected files again from their sources if they still exist",
            )
            return
        if info.sha256 and scanned.sha256 != info.sha256 and what == "band":
            # Damage no frame checksum covers (padding, the seek table): what it costs is
            # found blob by blob.
            self._damaged(
                band,
                info,
                path,
                by_band,
                f"SHA-256 {scanned.sha256.hex()[:16]} differs from the catalog's {info.sha256.hex()[:16]}",
            )
            return
        if info.sha256 and scanned.sha256 != info.sha256:
            self.problem(
                f"{what} {band}: SHA-256 {scanned.sha256.hex()[:16]} differs from the "
                f"catalog's {info.sha256.hex()[:16]}",
                self.affects(band),
            )
        have = set(scanned.blobs)
        lost = [
            blob for blob, ref in by_band.get(band, []) if (bytes(blob), ref.offset, ref.size) not in have
        ]
        if lost:
            self.problem(
                f"{what} {band}: {len(lost)} blob(s) of the catalog are not in it with the right SHA-256",
                self.affects(band),
            )

    def _damaged(
        self,
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
            self.report.notes.append(
                f"band {band} is damaged ({why}), but every blob the catalog reads from it "
                "verifies: the damage costs nothing still in use (what it held there was "
                "stored again in other bands, or was never file content)"
            )
            return
        self.report.damaged_blobs.update((blob, band) for blob in bad)
        self.problem(
            f"band {band} is damaged: {why}; {len(bad)} of the {len(blobs)} blob(s) "
            "the catalog reads from it fail their SHA-256",
            self.affects(band),
            "no damaged byte is ever served; the files that held them are listed as "
            "lost, and the next snapshot stores again those their sources still hold",
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

    # ---- the source ----------------------------------------------------------------------

    def _source(self, collection: CollectionConfig) -> None:
        sr = SourceReport(collection.name)
        self.report.source = sr
        latest = self.vault.catalog.latest_version(collection.name)
        if latest is None:
            raise UsageError(f"collection {collection.name!r} has no versions yet: nothing to compare with")
        sr.version = latest.number
        known: dict[bytes, Entry] = {}
        self._files(latest.root, b"", known)
        root = os.fsencode(collection.path)
        seen: set[bytes] = set()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                sr.files += 1
                seen.add(rel)
                entry = known.get(rel)
                shown = rel.decode("utf-8", "surrogateescape")
                if entry is None:
                    sr.added.append(shown)
                elif entry.size != st.st_size or entry.mtime_ns != st.st_mtime_ns:
                    sr.modified.append(shown)
                else:
                    try:
                        digest = _sha256_file(full)
                    except OSError:
                        sr.unreadable.append(shown)
                        continue
                    sr.hashed += 1
                    if entry.blob is not None and digest != entry.blob:
                        sr.bitrot.append(shown)
        sr.deleted = sorted(p.decode("utf-8", "surrogateescape") for p in set(known) - seen)
        for path in sr.bitrot:
            self.problem(
                f"bit rot suspected: {collection.name}/{display_path(path)} has the size "
                f"and mtime of v{latest.number} but different bytes",
                [f"{collection.name}@v{latest.number}"],
                "do not snapshot it over the good copy: compare with `vaultfs restore "
                "fetch`, check the disk (SMART, filesystem scrub), restore the file",
            )
        for path in sr.unreadable:
            self.problem(
                f"{collection.name}/{display_path(path)} cannot be read",
                [],
                "check the disk and the file's permissions",
            )

    def _files(self, tid: TreeId, prefix: bytes, out: dict[bytes, Entry]) -> None:
        for e in self.vault.tree(tid):
            rel = prefix + e.name
            if e.kind == "dir" and e.tree is not None:
                self._files(e.tree, rel + b"/", out)
            elif e.kind == "file":
                out[rel] = e


def _sha256_file(path: bytes) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _committed(v: VersionInfo) -> dict[str, Any]:
    d = v.to_json()
    d["verified_ns"] = []
    return d


def store_get(vault: Vault, key: str) -> bytes:
    return vault.store.get(key)


def record(config: Config, report: CheckReport) -> str:
    """Record what `check` found lost (missing bands, damaged blobs) in the catalog, under the
    vault lock; the check itself ran on a read-only catalog, which is closed by now. Returns
    a note saying what was recorded, or why not."""
    if not report.missing_bands and not report.damaged_blobs:
        return ""
    try:
        vault = Vault.open(config)
    except VaultError as e:
        return f"what was found lost is not recorded: {e.message}"
    try:
        with vault.lock():
            missing = heal.record_missing_bands(vault, report.missing_bands)
            damaged = heal.record_damaged_blobs(vault, report.damaged_blobs)
    except LockedError:
        return (
            "what was found lost is not recorded (another vaultfs process holds the lock): "
            "the next snapshot finds missing bands itself; run `vaultfs check --read-data` "
            "again for damaged ones"
        )
    finally:
        vault.close()
    blobs = sum(m.blobs for m in missing) + damaged
    if not blobs:
        return ""
    return (
        f"recorded {blobs} lost blob(s) in the local catalog: the next snapshot stores "
        "again those their sources still hold"
    )


def check(vault: Vault, *, read_data: bool = False, source: CollectionConfig | None = None) -> CheckReport:
    """Run the checks (see the module docstring) and return what they found."""
    return Checker(vault).run(read_data=read_data, source=source)
