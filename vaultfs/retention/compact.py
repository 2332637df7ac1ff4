"""``compact``: rewrite the warm bands that are mostly garbage after forgets.

prune deletes a band only when nothing kept needs it; a band of a forgotten version
that still holds a few files later versions kept stays whole. compact copies the live
blobs of such bands (and the directory listings their catalogs carry that kept versions
use) into new bands and deletes the old ones. The rules (which bands qualify) and the
order of the steps, with what a crash at each one leaves, are in the docstring of
`vaultfs.retention` and in docs/retention.md; the test points are named there too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vaultfs import band as bandfmt
from vaultfs import testpoints
from vaultfs.band import sidecar_blobs
from vaultfs.config import CollectionConfig
from vaultfs.errors import CorruptionError, VaultError
from vaultfs.index.publishing import publish_or_raise
from vaultfs.model import (
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    TreeId,
    VersionInfo,
    band_key,
    from_text,
    sidecar_key,
    to_text,
)
from vaultfs.retention.prune import (
    PENDING_META,
    BandPlan,
    LiveSet,
    band_usage,
    catch_up,
    count_unadopted,
    delete_band_objects,
    kept_versions,
    live_set,
    read_sidecar,
)
from vaultfs.snapshot.files import SMALL_FILE, ReadProgress, band_settings
from vaultfs.snapshot.spool import finish_spool_file, recover_spool
from vaultfs.store import ObjectNotFound
from vaultfs.vault import Vault
from vaultfs.walk import reachable

MIN_GARBAGE = 0.5  # default share of a band's bytes no kept version needs


@dataclass(slots=True)
class Chosen:
    """A band compact rewrites: its plan, and what its sidecar says about its blobs."""

    plan: BandPlan
    live: list[tuple[BlobId, BlobRef]]  # its live blobs, by offset
    names: dict[BlobId, bytes]  # member name of each blob in the band
    kept: bool = False  # a live blob could not be read: the band stays (with a problem)

    @property
    def band(self) -> BandId:
        return self.plan.band


@dataclass(slots=True)
class CompactResult:
    dry_run: bool
    min_garbage: float
    chosen: list[Chosen] = field(default_factory=list)
    skipped: list[tuple[BandPlan, str]] = field(default_factory=list)  # garbage enough, left: why
    new_bands: list[BandInfo] = field(default_factory=list)
    deleted: list[BandId] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    forgets_finished: int = 0
    deletions_resumed: int = 0
    spool_recovered: int = 0
    unadopted_versions: int = 0  # dry run: committed on the store, not yet known locally
    new_sidecar_bytes: int = 0

    @property
    def bytes_rewritten(self) -> int:
        """Uncompressed bytes of the live blobs copied (dry run: to be copied)."""
        return sum(c.plan.live_bytes for c in self.chosen if not c.kept)

    @property
    def old_bytes(self) -> int:
        """Store bytes of the chosen bands and their sidecars."""
        return sum(c.plan.size + c.plan.sidecar_size for c in self.chosen if not c.kept)

    @property
    def new_bytes(self) -> int:
        """Store bytes of the new bands and sidecars (dry run: the live share of the old)."""
        if self.dry_run:
            return sum(round(c.plan.size * (1 - c.plan.garbage_fraction)) for c in self.chosen)
        return sum(b.size for b in self.new_bands) + self.new_sidecar_bytes

    @property
    def bytes_freed(self) -> int:
        return max(0, self.old_bytes - self.new_bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "min_garbage": self.min_garbage,
            "bands": [{**c.plan.to_json(), "kept": c.kept} for c in self.chosen],
            "skipped": [{**p.to_json(), "why": why} for p, why in self.skipped],
            "new_bands": [b.band for b in self.new_bands],
            "deleted": list(self.deleted),
            "blobs_rewritten": sum(len(c.live) for c in self.chosen if not c.kept),
            "trees_carried": len({t for c in self.chosen for t in c.plan.live_trees}),
            "bytes_rewritten": self.bytes_rewritten,
            "bytes_before": self.old_bytes,
            "bytes_after": self.new_bytes,
            "bytes_freed": self.bytes_freed,
            "bytes_freed_estimated": self.dry_run,
            "problems": self.problems,
            "forgets_finished": self.forgets_finished,
            "deletions_resumed": self.deletions_resumed,
            "spool_recovered": self.spool_recovered,
            "unadopted_versions": self.unadopted_versions,
        }


class _NoProgress:
    def reading(self, files_total: int, bytes_total: int) -> None:
        pass

    def advance(self, files: int, size: int) -> None:
        pass


def compact(
    vault: Vault,
    *,
    dry_run: bool = False,
    min_garbage: float = MIN_GARBAGE,
    progress: ReadProgress | None = None,
    collections: Iterable[str] = (),
) -> CompactResult:
    """Rewrite warm bands whose garbage is at least `min_garbage` of their bytes.

    ``collections`` names configured collections whose committed-but-unadopted versions
    must be adopted first (as prune does). Not ``dry_run``: the caller holds the vault lock.
    """
    result = CompactResult(dry_run, min_garbage)
    markers = vault.forgotten_versions()
    names = sorted(set(vault.catalog.collections()) | set(collections))
    if dry_run:
        result.unadopted_versions = count_unadopted(vault, names)
    else:
        # A compaction killed before its new bands were uploaded left them in the spool:
        # uploading them registers their copies (the old bands then hold less).
        result.spool_recovered = len(recover_spool(vault))
        result.forgets_finished, result.deletions_resumed = catch_up(vault, markers, names)
    kept = kept_versions(vault, markers)
    live = live_set(vault, kept)
    result.chosen = _choose(vault, live, result)
    if dry_run or not result.chosen:
        return result
    progress = progress or _NoProgress()
    progress.reading(sum(len(c.live) for c in result.chosen), result.bytes_rewritten)
    _rewrite(vault, kept, result, progress)
    _commit(vault, result)
    return result


def _choose(vault: Vault, live: LiveSet, result: CompactResult) -> list[Chosen]:
    """The bands to rewrite (and those that qualify by garbage but are left, with why)."""
    usage = band_usage(vault, live, time.time_ns(), verb="compacted")
    warm = {c.name for c in vault.config.collections if c.tier == "warm"}
    by_band: dict[BandId, list[tuple[BlobId, BlobRef]]] = {}
    for blob, ref in vault.catalog.blob_refs():
        if blob in live.blobs:
            by_band.setdefault(ref.band, []).append((blob, ref))
    chosen = []
    for plan in sorted(usage.plans.values(), key=lambda p: p.band):
        if plan.collection not in warm or plan.band in usage.listed or not plan.dead_blobs:
            continue  # cold, or written by a kept version (all of it is that version's), or clean
        if plan.garbage_fraction < result.min_garbage:
            continue
        try:
            names = _inspect(vault, plan, live)
        except _Left as e:
            result.skipped.append((plan, e.why))
            continue
        blobs = sorted(by_band.get(plan.band, []), key=lambda br: br[1].offset)
        chosen.append(Chosen(plan, blobs, names))
    return chosen


class _Left(Exception):
    def __init__(self, why: str) -> None:
        self.why = why


def _inspect(vault: Vault, plan: BandPlan, live: LiveSet) -> dict[BlobId, bytes]:
    """Check that the band can be rewritten now; fill in its sidecar size and the live
    trees its catalog carries; return its member names. `_Left` says why not."""
    info = vault.catalog.band(plan.band)
    assert info is not None  # the plan was made from the catalog just now
    if info.state != "standard" or info.storage_class != "STANDARD":
        raise _Left(f"{info.state} in {info.storage_class}: compact never touches archived bands")
    try:
        head = vault.store.head(band_key(plan.band))
    except ObjectNotFound:
        raise _Left("missing from the store: run `vaultfs check`") from None
    if head.storage_class != "STANDARD":
        raise _Left(f"the store holds it in {head.storage_class}: compact never touches archived bands")
    try:
        plan.sidecar_size, sidecar = read_sidecar(vault, plan.band)
        carried = {TreeId(bytes.fromhex(t)) for t in sidecar.get("trees", {})}
        names = {
            BlobId(sha): from_text(str(doc["name"]))
            for (sha, _, _), doc in zip(sidecar_blobs(sidecar), sidecar["blobs"], strict=True)
        }
    except (ObjectNotFound, CorruptionError, ValueError, KeyError, TypeError):
        raise _Left("its sidecar catalog cannot be read: run `vaultfs check`") from None
    plan.live_trees = tuple(sorted(carried & live.trees))
    return names


# ---- rewriting -----------------------------------------------------------------------------


def _rewrite(vault: Vault, kept: list[VersionInfo], result: CompactResult, progress: ReadProgress) -> None:
    """Copy the live blobs of the chosen bands into new bands, one collection at a time; the
    last new band of a collection carries the live trees its old bands carried."""
    wanted = {blob for c in result.chosen for blob, _ in c.live}
    metas = _member_metas(vault, kept, wanted)
    by_collection: dict[str, list[Chosen]] = {}
    for c in result.chosen:
        by_collection.setdefault(c.plan.collection, []).append(c)
    for name, chosen in sorted(by_collection.items()):
        out = _NewBands(vault, vault.config.collection(name), [c.band for c in chosen], result)
        try:
            for c in chosen:
                _copy_band(vault, c, out, metas, result, progress)
            out.finish(_tree_bytes(vault, {t for c in chosen for t in c.plan.live_trees}))
        except BaseException:
            out.abort()
            raise


def _tree_bytes(vault: Vault, trees: set[TreeId]) -> dict[TreeId, bytes]:
    out = {}
    for tid in sorted(trees):
        raw = vault.catalog.tree_bytes(tid)
        assert raw is not None  # in the live set, so in the catalog
        out[tid] = raw
    return out


def _copy_band(
    vault: Vault,
    c: Chosen,
    out: _NewBands,
    metas: dict[BlobId, bandfmt.MemberMeta],
    result: CompactResult,
    progress: ReadProgress,
) -> None:
    for blob, ref in c.live:
        try:
            out.add(blob, ref.size, c.names.get(blob) or _fallback_name(c, blob), metas[blob])
        except CorruptionError as e:
            c.kept = True
            result.problems.append(
                f"band {c.band}: {e.message}: the band is kept; run `vaultfs check --read-data`"
            )
            return
        progress.advance(1, ref.size)


def _fallback_name(c: Chosen, blob: BlobId) -> bytes:
    """A member name for a blob its band's sidecar does not list (a catalog out of step)."""
    return f"{c.plan.collection}/.vaultfs-compacted/{blob.hex()}".encode()


def _member_metas(
    vault: Vault, kept: list[VersionInfo], wanted: set[BlobId]
) -> dict[BlobId, bandfmt.MemberMeta]:
    """For each wanted blob, the tar header metadata of a file of a kept version holding it
    (the band's tar stream stays extractable with `tar`; a sparse file keeps its map)."""
    out: dict[BlobId, bandfmt.MemberMeta] = {}
    for _, entries in reachable(vault.tree, [v.root for v in kept]):
        for e in entries or ():
            if e.kind == "file" and e.blob in wanted and e.blob not in out:
                out[e.blob] = bandfmt.MemberMeta(
                    mode=e.mode,
                    uid=e.uid,
                    gid=e.gid,
                    mtime_ns=e.mtime_ns,
                    xattrs=e.xattrs,
                    sparse=None if e.sparse is None else (e.size, e.sparse),
                )
    return out


class _ChunkReader:
    """`BandWriter.add_blob_stream`'s reader over a blob's verified chunks (`Vault.iter_blob`,
    which raises CorruptionError before the last chunk of a blob that fails its SHA-256)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")

    def __call__(self, view: memoryview, offset: int) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        n = min(len(view), len(self._left))
        view[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


class _NewBands:
    """The new bands of one collection: filled up to ``band_size``, each uploaded as soon as
    it is closed (which registers its blobs: from then on they are read from the copy)."""

    def __init__(self, vault: Vault, collection: CollectionConfig, old: list[BandId], result: CompactResult):
        self.vault, self.collection, self.old, self.result = vault, collection.name, old, result
        self.frame_size, self.level, self.whole_members = band_settings(vault.config, collection)
        self.writer: bandfmt.BandWriter | None = None

    def add(self, blob: BlobId, size: int, name: bytes, meta: bandfmt.MemberMeta) -> None:
        """Read the blob (verified) and append it; CorruptionError leaves the band as it was."""
        w = self.writer
        if w is not None and w.uncompressed_size and w.uncompressed_size + size > self.vault.config.band_size:
            self._close({})
        w = self.writer or self._open()
        if size <= SMALL_FILE:
            w.add_blob(name, meta, self.vault.read_blob(blob), blob)
        else:
            w.add_blob_stream(name, meta, size, _ChunkReader(self.vault.iter_blob(blob)), blob)

    def finish(self, trees: dict[TreeId, bytes]) -> None:
        """Close the last band with the trees (a band of trees alone when no blob was live)."""
        if trees and self.writer is None:
            self._open()
        if self.writer is not None:
            self._close({"trees": {t.hex(): to_text(raw) for t, raw in trees.items()}} if trees else {})

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def _open(self) -> bandfmt.BandWriter:
        band_id = bandfmt.new_band_id()
        self.writer = bandfmt.BandWriter(
            self.vault.spool_dir / f"{band_id}.tar.zst.part",
            band_id,
            level=self.level,
            frame_size=self.frame_size,
            threads=self.vault.config.threads,
            whole_members=self.whole_members,
        )
        return self.writer

    def _close(self, extra: dict[str, object]) -> None:
        writer, self.writer = self.writer, None
        assert writer is not None
        extra = {"collection": self.collection, "compacted_from": list(self.old), **extra}
        # As a snapshot's band: once renamed, a crash leaves it for `recover_spool`.
        closed = finish_spool_file(writer.close(extra, sync=False))
        testpoints.reach("compact-band-closed")
        info = self.vault.upload_band(closed, self.collection)
        self.result.new_bands.append(info)
        testpoints.reach("compact-band-uploaded")
        closed.path.unlink(missing_ok=True)


# ---- committing ----------------------------------------------------------------------------


def _commit(vault: Vault, result: CompactResult) -> None:
    """Drop the old bands from the catalog (recording them as pending deletion), publish the
    index, delete their objects on the store, clear the pending record."""
    old = [c for c in result.chosen if not c.kept]
    ids = sorted(c.band for c in old)
    moved = {blob for c in old for blob, _ in c.live}
    left = [(blob, ref.band) for blob, ref in vault.catalog.blob_refs() if ref.band in ids]
    for blob, band in left:
        if blob in moved:  # its copy was not registered: never drop the only place
            raise VaultError(f"blob {blob.hex()[:16]} was not moved out of band {band}: nothing deleted")
    with vault.catalog.writer() as w:
        for blob, _ in left:
            w.delete_blob(blob)  # dead: no kept version names it
        for band in ids:
            w.delete_band(band)
        w.set_meta(PENDING_META, json.dumps(ids))
    testpoints.reach("compact-committed")
    result.new_sidecar_bytes = sum(vault.store.head(sidecar_key(b.band)).size for b in result.new_bands)
    try:
        publish_or_raise(vault, full=False)
    except VaultError as e:
        result.problems.append(
            f"the consolidated index was not updated ({e.message}): the old bands are kept until "
            "it is; run `vaultfs compact` or `vaultfs prune` again"
        )
        return
    for band in ids:
        delete_band_objects(vault, [band])
        testpoints.reach("compact-band-deleted")
    with vault.catalog.writer() as w:
        w.delete_meta(PENDING_META)
    result.deleted = ids
