"""Rewriting bands: what ``compact`` and ``recompress`` share.

Both copy the live blobs of the bands they choose (each read SHA-256 verified) into new
bands of the same collection, carry the directory listings kept versions use that the old
catalogs carried, upload the new bands (which registers the copies: from then on the
files are read from them), then drop the old bands from the catalog (recording them under
``prune_pending``), publish the index and delete the old objects. They differ in which
bands they choose (`compact`: warm bands mostly garbage; `recompress`: cold bands written
at a low zstd level) and in how they write, which `Rewrite` says: compact fills new bands
up to ``band_size`` per collection at the collection's level; recompress writes one new
band per old band at its target level, carrying the old catalog's version record copy and
the band's preview object, and names the band it replaces (``recompressed_from``,
`BandInfo.replaces`), so versions that list the old band find it.

The order of the steps and what a crash at each leaves are in the docstring of
`vaultfs.retention` and in docs/retention.md; the test points are ``<verb>-band-closed``,
``<verb>-band-uploaded``, ``<verb>-committed`` and ``<verb>-band-deleted``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultfs import band as bandfmt
from vaultfs import testpoints
from vaultfs.band import sidecar_blobs
from vaultfs.band.preview import PreviewRange, PreviewWriter, read_preview_index
from vaultfs.config import CollectionConfig
from vaultfs.errors import CorruptionError, VaultError
from vaultfs.fsutil import fsync_path
from vaultfs.index.publishing import publish_or_raise
from vaultfs.keys import preview_key
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
    catch_up,
    count_unadopted,
    delete_band_objects,
    kept_versions,
    live_set,
    read_sidecar,
)
from vaultfs.snapshot.files import SMALL_FILE, ReadProgress, band_settings
from vaultfs.snapshot.previews import PREVIEW_SUFFIX, put_preview
from vaultfs.snapshot.spool import finish_spool_file, recover_spool
from vaultfs.store import ObjectNotFound
from vaultfs.vault import Vault
from vaultfs.walk import reachable


@dataclass(frozen=True, slots=True)
class OldPreview:
    """An old band's preview object, downloaded to the spool: the ranges of its live blobs."""

    path: Path
    ranges: dict[BlobId, tuple[PreviewRange, ...]]


@dataclass(frozen=True, slots=True)
class Rewrite:
    """How a command rewrites the bands it chose."""

    verb: str  # "compact" or "recompress": test point names and messages
    from_key: str  # the catalog key naming the bands a new band replaces
    level: int | None = None  # None: the collection's (`band_settings`); else this, level 3's window
    per_band: bool = False  # one new band per old band, else filled to band_size per collection


@dataclass(slots=True)
class Chosen:
    """A band to rewrite: its plan, and what its sidecar says about its blobs."""

    plan: BandPlan
    live: list[tuple[BlobId, BlobRef]]  # its live blobs, by offset
    names: dict[BlobId, bytes]  # member name of each blob in the band
    kept: bool = False  # a live blob could not be read: the band stays (with a problem)
    carry: dict[str, Any] = field(default_factory=dict)  # catalog keys its new band carries too
    replaces: tuple[BandId, ...] = ()  # per band: what the new band's `from_key` names
    new_band: BandId | None = None  # per band: its copy, once uploaded

    @property
    def band(self) -> BandId:
        return self.plan.band


@dataclass(slots=True)
class RewriteResult:
    """What compact and recompress report alike."""

    dry_run: bool
    chosen: list[Chosen] = field(default_factory=list)
    skipped: list[tuple[BandPlan, str]] = field(default_factory=list)  # qualify, but left: why
    new_bands: list[BandInfo] = field(default_factory=list)
    deleted: list[BandId] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    forgets_finished: int = 0
    deletions_resumed: int = 0
    spool_recovered: int = 0
    unadopted_versions: int = 0  # dry run: committed on the store, not yet known locally
    new_sidecars: dict[BandId, int] = field(default_factory=dict)  # bytes of each new band's sidecar
    stopped: bool = False  # the index could not be published: nothing more was committed

    @property
    def bytes_rewritten(self) -> int:
        """Uncompressed bytes of the live blobs copied (dry run: to be copied)."""
        return sum(c.plan.live_bytes for c in self.chosen if not c.kept)

    @property
    def old_bytes(self) -> int:
        """Store bytes of the chosen bands and their sidecars."""
        return sum(c.plan.size + c.plan.sidecar_size for c in self.chosen if not c.kept)

    def common_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "skipped": [{**p.to_json(), "why": why} for p, why in self.skipped],
            "new_bands": [b.band for b in self.new_bands],
            "deleted": list(self.deleted),
            "blobs_rewritten": sum(len(c.live) for c in self.chosen if not c.kept),
            "trees_carried": len({t for c in self.chosen for t in c.plan.live_trees}),
            "bytes_rewritten": self.bytes_rewritten,
            "problems": self.problems,
            "forgets_finished": self.forgets_finished,
            "deletions_resumed": self.deletions_resumed,
            "spool_recovered": self.spool_recovered,
            "unadopted_versions": self.unadopted_versions,
        }


def prepare(
    vault: Vault, result: RewriteResult, collections: Iterable[str]
) -> tuple[list[VersionInfo], LiveSet]:
    """Catch up (not a dry run: bands a killed run left in the spool, interrupted forgets,
    versions committed on the store but unknown here, pending deletions), then the kept
    versions and their live set. ``collections`` names configured collections whose
    unadopted versions must be adopted too."""
    markers = vault.forgotten_versions()
    names = sorted(set(vault.catalog.collections()) | set(collections))
    if result.dry_run:
        result.unadopted_versions = count_unadopted(vault, names)
    else:
        # A rewrite killed before its new bands were uploaded left them in the spool:
        # uploading them registers their copies (the old bands then hold less).
        result.spool_recovered = len(recover_spool(vault))
        result.forgets_finished, result.deletions_resumed = catch_up(vault, markers, names)
    kept = kept_versions(vault, markers)
    return kept, live_set(vault, kept)


class Left(Exception):
    """A band that qualifies but cannot be rewritten now; `why` says why."""

    def __init__(self, why: str) -> None:
        self.why = why


def inspect(
    vault: Vault, plan: BandPlan, live: LiveSet, verb: str
) -> tuple[dict[str, Any], dict[BlobId, bytes]]:
    """Check that the band can be rewritten now (STANDARD in the catalog and on the store,
    its sidecar readable); fill in its sidecar size and the live trees its catalog carries;
    return its sidecar and member names. `Left` says why not."""
    info = vault.catalog.band(plan.band)
    assert info is not None  # the plan was made from the catalog just now
    if info.state != "standard" or info.storage_class != "STANDARD":
        raise Left(f"{info.state} in {info.storage_class}: {verb} never touches archived bands")
    try:
        head = vault.store.head(band_key(plan.band))
    except ObjectNotFound:
        raise Left("missing from the store: run `vaultfs check`") from None
    if head.storage_class != "STANDARD":
        raise Left(f"the store holds it in {head.storage_class}: {verb} never touches archived bands")
    try:
        plan.sidecar_size, sidecar = read_sidecar(vault, plan.band)
        carried = {TreeId(bytes.fromhex(t)) for t in sidecar.get("trees", {})}
        names = {
            BlobId(sha): from_text(str(doc["name"]))
            for (sha, _, _), doc in zip(sidecar_blobs(sidecar), sidecar["blobs"], strict=True)
        }
    except (ObjectNotFound, CorruptionError, ValueError, KeyError, TypeError):
        raise Left("its sidecar catalog cannot be read: run `vaultfs check`") from None
    plan.live_trees = tuple(sorted(carried & live.trees))
    return sidecar, names


def live_blobs_by_band(vault: Vault, live: LiveSet) -> dict[BandId, list[tuple[BlobId, BlobRef]]]:
    """Each band's live blobs, by offset."""
    by_band: dict[BandId, list[tuple[BlobId, BlobRef]]] = {}
    for blob, ref in vault.catalog.blob_refs():
        if blob in live.blobs:
            by_band.setdefault(ref.band, []).append((blob, ref))
    for blobs in by_band.values():
        blobs.sort(key=lambda br: br[1].offset)
    return by_band


# ---- rewriting -----------------------------------------------------------------------------


def rewrite(
    vault: Vault,
    kept: list[VersionInfo],
    result: RewriteResult,
    policy: Rewrite,
    progress: ReadProgress,
    commit_every: int = 0,
) -> None:
    """Copy the live blobs of the chosen bands into new bands and commit: compact fills new
    bands per collection and commits once; per band, each band gets its own new band and
    the old ones are committed every `commit_every` bands (0: once, at the end), so a long
    run never holds more than that many bands twice on the store."""
    progress.reading(sum(len(c.live) for c in result.chosen), result.bytes_rewritten)
    metas = member_metas(vault, kept, {blob for c in result.chosen for blob, _ in c.live})
    if policy.per_band:
        groups = [[c] for c in result.chosen]
    else:
        by_collection: dict[str, list[Chosen]] = {}
        for c in result.chosen:
            by_collection.setdefault(c.plan.collection, []).append(c)
        groups = [group for _, group in sorted(by_collection.items())]
    done: list[Chosen] = []
    for group in groups:
        _write_group(vault, group, metas, result, policy, progress)
        done += group
        if commit_every and len(done) >= commit_every:
            if not commit(vault, done, result, policy):
                return
            done = []
    if done:
        commit(vault, done, result, policy)


def _write_group(
    vault: Vault,
    group: list[Chosen],
    metas: dict[BlobId, bandfmt.MemberMeta],
    result: RewriteResult,
    policy: Rewrite,
    progress: ReadProgress,
) -> None:
    first = group[0]
    ids = [c.band for c in group]
    previews = _old_previews(vault, first, result) if policy.per_band and first.live else None
    out = NewBands(
        vault,
        first.plan.collection,
        list(first.replaces) if policy.per_band else ids,
        result,
        policy,
        previews=previews,
    )
    try:
        for c in group:
            _copy_band(c, out, metas, result, progress)
            if c.kept and policy.per_band:
                out.abort()  # its copy must hold every live blob (`BandInfo.replaces`)
                return
        extra = {k: v for c in group for k, v in c.carry.items()}
        out.finish(_tree_bytes(vault, {t for c in group for t in c.plan.live_trees}), extra)
    except BaseException:
        out.abort()
        raise
    finally:
        if previews is not None:
            previews.path.unlink(missing_ok=True)
    if policy.per_band and out.written:
        first.new_band = out.written[-1].band


def _old_previews(vault: Vault, c: Chosen, result: RewriteResult) -> OldPreview | None:
    """The band's preview object, downloaded to the spool (a ``.part`` file: a crash leaves
    it for `recover_spool` to delete), with the ranges of its live blobs; None when it has
    none. A damaged one is reported and not carried: the band itself is what matters."""
    path = vault.spool_dir / f"{c.band}{PREVIEW_SUFFIX}.old.part"
    try:
        vault.store.get_to_file(preview_key(c.band), path)
        with path.open("rb") as f:
            index = read_preview_index(f, path.stat().st_size, c.band)
    except ObjectNotFound:
        path.unlink(missing_ok=True)
        return None
    except CorruptionError as e:
        path.unlink(missing_ok=True)
        result.problems.append(f"{e.message}: its new band gets no preview object")
        return None
    wanted = {blob for blob, _ in c.live}
    return OldPreview(path, {BlobId(blob): r for blob, r in index.items() if blob in wanted})


def _tree_bytes(vault: Vault, trees: set[TreeId]) -> dict[TreeId, bytes]:
    out = {}
    for tid in sorted(trees):
        raw = vault.catalog.tree_bytes(tid)
        assert raw is not None  # in the live set, so in the catalog
        out[tid] = raw
    return out


def _copy_band(
    c: Chosen,
    out: NewBands,
    metas: dict[BlobId, bandfmt.MemberMeta],
    result: RewriteResult,
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


def member_metas(
    vault: Vault, kept: list[VersionInfo], wanted: set[BlobId]
) -> dict[BlobId, bandfmt.MemberMeta]:
    """For each wanted blob, the tar header metadata of a file of a kept version holding it
    (the band's tar stream stays extractable with `tar`; a sparse file keeps its map)."""
    out: dict[BlobId, bandfmt.MemberMeta] = {}
    if not wanted:
        return out
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


def _collection_config(vault: Vault, name: str) -> CollectionConfig:
    """The collection's config; a hub client's collection (not in the config) gets its
    tier's defaults."""
    for c in vault.config.collections:
        if c.name == name:
            return c
    return CollectionConfig(name, Path("."), tier=vault.collection_tier(name) or "cold")


class NewBands:
    """The new bands of one group: filled up to ``band_size``, each uploaded as soon as it
    is closed (which registers its blobs: from then on they are read from the copy)."""

    def __init__(
        self,
        vault: Vault,
        collection: str,
        old: list[BandId],
        result: RewriteResult,
        policy: Rewrite,
        previews: OldPreview | None = None,
    ):
        self.vault, self.collection, self.old, self.result, self.policy = (
            vault,
            collection,
            old,
            result,
            policy,
        )
        self.frame_size, level, self.whole_members = band_settings(
            vault.config, _collection_config(vault, collection)
        )
        self.level = level if policy.level is None else policy.level
        self.previews = previews
        self.writer: bandfmt.BandWriter | None = None
        self.blobs: list[BlobId] = []  # of the band being written
        self.written: list[BandInfo] = []

    def add(self, blob: BlobId, size: int, name: bytes, meta: bandfmt.MemberMeta) -> None:
        """Read the blob (verified) and append it; CorruptionError leaves the band as it was."""
        w = self.writer
        # Compact fills bands up to band_size; recompress keeps one old band's content in
        # one new band (`BandInfo.replaces`), which is no larger than the old one.
        if (
            w is not None
            and not self.policy.per_band
            and w.uncompressed_size
            and w.uncompressed_size + size > self.vault.config.band_size
        ):
            self._close({})
        w = self.writer or self._open()
        if size <= SMALL_FILE:
            w.add_blob(name, meta, self.vault.read_blob(blob), blob)
        else:
            w.add_blob_stream(name, meta, size, _ChunkReader(self.vault.iter_blob(blob)), blob)
        self.blobs.append(blob)

    def finish(self, trees: dict[TreeId, bytes], extra: dict[str, Any]) -> None:
        """Close the last band with the trees and `extra` keys (a band of trees alone when
        no blob was live)."""
        if trees and self.writer is None:
            self._open()
        if self.writer is not None:
            carried = {"trees": {t.hex(): to_text(raw) for t, raw in trees.items()}} if trees else {}
            self._close({**carried, **extra})

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
            self.blobs = []

    def _open(self) -> bandfmt.BandWriter:
        band_id = bandfmt.new_band_id()
        self.writer = bandfmt.BandWriter(
            self.vault.spool_dir / f"{band_id}.tar.zst.part",
            band_id,
            level=self.level,
            frame_size=self.frame_size,
            threads=self.vault.config.threads,
            whole_members=self.whole_members,
            fixed_window=self.policy.level is not None,
        )
        return self.writer

    def _close(self, extra: dict[str, object]) -> None:
        writer, self.writer = self.writer, None
        blobs, self.blobs = self.blobs, []
        assert writer is not None
        extra = {"collection": self.collection, self.policy.from_key: list(self.old), **extra}
        closed = writer.close(extra, sync=False)
        preview = self._preview(closed.band_id, blobs)
        # As a snapshot's band: once renamed, a crash leaves it for `recover_spool` (which
        # uploads a finished preview object first).
        closed = finish_spool_file(closed)
        testpoints.reach(f"{self.policy.verb}-band-closed")
        if preview is not None:
            put_preview(self.vault, closed.band_id, preview)
        replaces = tuple(self.old) if self.policy.per_band else ()
        info = self.vault.upload_band(closed, self.collection, replaces=replaces)
        self.result.new_bands.append(info)
        self.written.append(info)
        self.result.new_sidecars[info.band] = self.vault.store.head(sidecar_key(info.band)).size
        testpoints.reach(f"{self.policy.verb}-band-uploaded")
        if preview is not None:
            preview.unlink(missing_ok=True)
        closed.path.unlink(missing_ok=True)

    def _preview(self, band: str, blobs: list[BlobId]) -> Path | None:
        """The new band's preview object in the spool, finished and renamed into place
        before the band is (None: none of its blobs has preview ranges). Each range is
        checked against its SHA-256 as it is copied; a blob with a bad one keeps none."""
        old = self.previews
        kept = [(blob, old.ranges[blob]) for blob in blobs if old is not None and old.ranges.get(blob)]
        if old is None or not kept:
            return None
        part = self.vault.spool_dir / f"{band}{PREVIEW_SUFFIX}.part"
        writer = PreviewWriter(part, band)
        try:
            with old.path.open("rb") as f:
                for blob, ranges in kept:
                    pieces = [(r, os.pread(f.fileno(), r.length, r.data_offset)) for r in ranges]
                    if any(hashlib.sha256(data).digest() != r.sha256 for r, data in pieces):
                        self.result.problems.append(
                            f"preview object of band {self.old[0]}: a range of blob {blob.hex()[:16]} "
                            "fails its SHA-256: not carried to the new band"
                        )
                        continue
                    entries: list[tuple[int, bytes, bytes | None]] = [
                        (r.file_offset, data, r.sha256) for r, data in pieces
                    ]
                    writer.add(blob, entries)
            if writer.empty:
                writer.abort()
                return None
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        fsync_path(part)
        final = part.with_name(part.name.removesuffix(".part"))
        os.replace(part, final)
        return final


# ---- committing ----------------------------------------------------------------------------


def commit(vault: Vault, chosen: list[Chosen], result: RewriteResult, policy: Rewrite) -> bool:
    """Drop the old bands from the catalog (recording them as pending deletion), publish the
    index, delete their objects on the store, clear the pending record. False when the index
    could not be published (the old bands wait under ``prune_pending``; a problem is noted)."""
    old = [c for c in chosen if not c.kept]
    ids = sorted(c.band for c in old)
    moved = {blob for c in old for blob, _ in c.live}
    left = [(blob, ref.band) for blob, ref in vault.catalog.blob_refs() if ref.band in ids]
    for blob, band in left:
        if blob in moved:  # its copy was not registered: never drop the only place
            raise VaultError(f"blob {blob.hex()[:16]} was not moved out of band {band}: nothing deleted")
    pending = json.loads(vault.catalog.meta(PENDING_META) or "[]")
    with vault.catalog.writer() as w:
        for blob, _ in left:
            w.delete_blob(blob)  # dead: no kept version names it
        for band in ids:
            w.delete_band(band)
        w.set_meta(PENDING_META, json.dumps(sorted({*pending, *ids})))
    testpoints.reach(f"{policy.verb}-committed")
    try:
        publish_or_raise(vault, full=False)
    except VaultError as e:
        result.problems.append(
            f"the consolidated index was not updated ({e.message}): the old bands are kept until "
            f"it is; run `vaultfs {policy.verb}` or `vaultfs prune` again"
        )
        result.stopped = True
        return False
    for band in ids:
        delete_band_objects(vault, [band])
        testpoints.reach(f"{policy.verb}-band-deleted")
    with vault.catalog.writer() as w:
        w.delete_meta(PENDING_META)
    result.deleted += ids
    return True
