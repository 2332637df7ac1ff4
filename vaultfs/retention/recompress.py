"""``recompress``: rewrite cold bands written at a low zstd level, before they are archived.

A first backup to a fast store (a LAN disk, a local directory) keeps ``compression_level
= "auto"`` at ``auto_min``: the link never waits, so no frame is worth more CPU. Cold data
is written once and billed for years, so an idle NAS may spend its CPU later: recompress
copies the live files of such bands into new bands at the target level (``auto_max``, or
``--level``) and deletes the old ones, with compact's machinery (`vaultfs.retention.rewrite`),
one new band per old band.

Which bands qualify, how a dry run estimates the saving, and the order of the steps with
what a crash at each one leaves are in the docstring of `vaultfs.retention` and in
docs/retention.md ("recompress").
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vaultfs import band as bandfmt
from vaultfs.band.compression import compress_frame
from vaultfs.errors import CorruptionError
from vaultfs.model import BandId, BandInfo, TreeId, band_key, band_successors
from vaultfs.retention.prune import LiveSet, band_usage, read_sidecar
from vaultfs.retention.rewrite import (
    Chosen,
    Left,
    Rewrite,
    RewriteResult,
    inspect,
    live_blobs_by_band,
    prepare,
    rewrite,
)
from vaultfs.snapshot.files import ReadProgress
from vaultfs.store import ObjectArchived, ObjectNotFound
from vaultfs.vault import Vault

MIN_LOW_SHARE = 0.1  # share of a band's data bytes in frames below the target for it to qualify
UNKNOWN_LEVEL = bandfmt.DEFAULT_LEVEL  # a frame of a band written before levels were recorded
SAMPLES_PER_BAND = 2  # frames a dry run compresses at the target level, per band ...
SAMPLE_FRAMES = 16  # ... and in all (level 19: about 2 s per 4 MiB frame on one core)
COMMIT_EVERY = 16  # old bands dropped (and deleted) every this many rewritten bands


@dataclass(slots=True)
class Recompressed(Chosen):
    """A band recompress rewrites, and what its frames' levels say."""

    levels: tuple[int, ...] = ()  # each data frame's level (unknown ones: see `frame_levels`)
    levels_known: bool = True  # False: written before levels were recorded
    low_share: float = 0.0  # share of its data bytes in compressible frames below the target
    replaced_by: BandId | None = None  # an interrupted run's copy of it is registered already
    estimate: int | None = None  # dry run: the new band's estimated bytes
    sampled: int = 0  # dry run: frames compressed to estimate it

    def to_json(self, new: BandInfo | None) -> dict[str, Any]:
        lo_hi = [min(self.levels), max(self.levels)] if self.levels else None
        return {
            **self.plan.to_json(),
            "levels": lo_hi,
            "levels_known": self.levels_known,
            "low_share": round(self.low_share, 4),
            "replaced_by": self.replaced_by,
            "estimated_size": self.estimate,
            "sampled_frames": self.sampled,
            "new_band": self.new_band,
            "new_size": new.size if new is not None else None,
            "new_levels": list(new.levels) if new is not None and new.levels else None,
            "kept": self.kept,
        }


@dataclass(slots=True)
class RecompressResult(RewriteResult):
    level: int = bandfmt.DEFAULT_LEVEL  # the target
    at_target: int = 0  # readable cold bands already at the target (or incompressible)
    archived: int = 0  # cold bands below the target in an archive class (never touched)
    sampled_frames: int = 0
    bands: list[Recompressed] = field(default_factory=list)  # `chosen`, typed

    @property
    def rewritten(self) -> list[Recompressed]:
        """The bands rewritten (dry run: to be), not those an interrupted run copied already."""
        return [
            c
            for c in self.bands
            if c.replaced_by is None and not c.kept and (self.dry_run or c.new_band is not None)
        ]

    @property
    def old_bytes(self) -> int:
        """Store bytes of the bands rewritten and their sidecars."""
        return sum(c.plan.size + c.plan.sidecar_size for c in self.rewritten)

    @property
    def new_bytes(self) -> int:
        """Store bytes of their new bands and sidecars (dry run: estimated; the sidecar as
        the old one, less the files no kept version needs)."""
        if self.dry_run:
            return sum(
                (c.estimate or 0) + round(c.plan.sidecar_size * _live_share(c)) for c in self.rewritten
            )
        sizes = {b.band: b.size for b in self.new_bands}
        return sum(sizes[c.new_band] + self.new_sidecars[c.new_band] for c in self.rewritten if c.new_band)

    @property
    def bytes_saved(self) -> int:
        """The old bands and sidecars less the new ones (dry run: estimated)."""
        return self.old_bytes - self.new_bytes

    def to_json(self) -> dict[str, Any]:
        new = {b.band: b for b in self.new_bands}
        return {
            **self.common_json(),
            "level": self.level,
            "bands": [c.to_json(new.get(c.new_band) if c.new_band else None) for c in self.bands],
            "at_target": self.at_target,
            "archived": self.archived,
            "bytes_before": self.old_bytes,
            "bytes_after": self.new_bytes,
            "bytes_saved": self.bytes_saved,
            "bytes_saved_estimated": self.dry_run,
            "sampled_frames": self.sampled_frames,
        }


class _NoProgress:
    def reading(self, files_total: int, bytes_total: int) -> None:
        pass

    def advance(self, files: int, size: int) -> None:
        pass


def recompress(
    vault: Vault,
    *,
    level: int,
    dry_run: bool = False,
    only: Iterable[str] = (),
    progress: ReadProgress | None = None,
    collections: Iterable[str] = (),
) -> RecompressResult:
    """Rewrite the readable cold bands (of the collections in `only`, default all) that
    have frames below `level` at `level`; a dry run estimates the saving.

    ``collections`` names configured collections whose committed-but-unadopted versions
    must be adopted first (as prune does). Not ``dry_run``: the caller holds the vault lock.
    """
    result = RecompressResult(dry_run, level=level)
    kept, live = prepare(vault, result, collections)
    result.bands = _choose(vault, live, result, set(only))
    result.chosen = list(result.bands)
    if dry_run:
        _estimate(vault, result)
        return result
    if result.chosen:
        policy = Rewrite("recompress", "recompressed_from", level=level, per_band=True)
        rewrite(vault, kept, result, policy, progress or _NoProgress(), commit_every=COMMIT_EVERY)
    return result


# ---- choosing ------------------------------------------------------------------------------


def _choose(vault: Vault, live: LiveSet, result: RecompressResult, only: set[str]) -> list[Recompressed]:
    """The bands to rewrite: every readable cold band with enough data below the target, and
    every band an interrupted run already copied (to finish it). Counts the others."""
    usage = band_usage(vault, live, time.time_ns(), verb="recompressed")
    infos = {b.band: b for b in vault.catalog.bands()}
    successors = band_successors(infos.values())
    by_band = live_blobs_by_band(vault, live)
    kept = {(v.collection, v.number) for v in live.versions}
    tiers: dict[str, str | None] = {}
    chosen: list[Recompressed] = []
    for plan in sorted(usage.plans.values(), key=lambda p: p.band):
        if only and plan.collection not in only:
            continue
        if plan.collection not in tiers:  # the config's, or a hub client's recorded one
            tiers[plan.collection] = vault.collection_tier(plan.collection) if plan.collection else None
        if tiers[plan.collection] != "cold":
            continue
        info = infos[plan.band]
        replaced_by = successors.get(plan.band)
        if replaced_by is None and (not plan.live_blobs or _at_target(info, result.level)):
            if plan.live_blobs:
                result.at_target += 1
            continue  # nothing live (prune's), or nothing to gain
        try:
            sidecar, names = inspect(vault, plan, live, "recompress")
        except Left as e:
            if info.storage_class != "STANDARD":
                result.archived += 1
            result.skipped.append((plan, e.why))
            continue
        c = Recompressed(plan, by_band.get(plan.band, []), names, replaces=(plan.band, *info.replaces))
        if replaced_by is not None:
            # Its copy holds its version record copy and the trees it carried; carry only
            # what a snapshot since made live again (a file deduplicated against it).
            c.replaced_by = replaced_by
            plan.live_trees = tuple(sorted(set(plan.live_trees) - _carried_trees(vault, replaced_by)))
            chosen.append(c)
            continue
        c.levels, c.levels_known = frame_levels(info, sidecar)
        c.low_share = low_share(info, c.levels, result.level)
        if c.low_share < MIN_LOW_SHARE:
            result.at_target += 1
            continue
        version = sidecar.get("version")
        if isinstance(version, dict) and (version.get("collection"), version.get("number")) in kept:
            c.carry = {"version": version}  # rung 3-5 of the rebuild find the copy there
        chosen.append(c)
    return chosen


def _at_target(info: BandInfo, target: int) -> bool:
    """What the local catalog tells without reading the sidecar: every data frame is at the
    target or above, or incompressible (a band of already compressed media)."""
    if info.levels is not None:
        lo, hi = info.levels
        return hi == bandfmt.CHEAP_LEVEL or lo >= target
    return all(_incompressible(c, u) for c, u in info.frames[:-1])


def _incompressible(csize: int, usize: int) -> bool:
    return usize == 0 or csize > usize * bandfmt.INCOMPRESSIBLE_RATIO


def frame_levels(info: BandInfo, sidecar: dict[str, Any]) -> tuple[tuple[int, ...], bool]:
    """Each data frame's level from the band's catalog (its sidecar's copy), and whether it
    was recorded: a band written before levels were recorded counts each frame that shrank
    by less than 3 % as incompressible (`CHEAP_LEVEL`, the probe's rule) and every other
    one as `UNKNOWN_LEVEL`, the fixed default of those versions."""
    data = info.frames[:-1]  # the last frame is the catalog's
    try:
        levels = bandfmt.frame_levels(sidecar, info.band)
    except CorruptionError:
        levels = ()
    if len(levels) == len(data):
        return levels, True
    return tuple(bandfmt.CHEAP_LEVEL if _incompressible(c, u) else UNKNOWN_LEVEL for c, u in data), False


def low_share(info: BandInfo, levels: tuple[int, ...], target: int) -> float:
    """The share of the band's data bytes (uncompressed) in compressible frames below `target`."""
    sizes = [u for _, u in info.frames[:-1]]
    total = sum(sizes)
    low = sum(u for u, lv in zip(sizes, levels, strict=True) if _low(lv, target))
    return low / total if total else 0.0


def _low(level: int, target: int) -> bool:
    return level != bandfmt.CHEAP_LEVEL and level < target


def _carried_trees(vault: Vault, band: BandId) -> set[TreeId]:
    try:
        _, sidecar = read_sidecar(vault, band)
        return {TreeId(bytes.fromhex(t)) for t in sidecar.get("trees", {})}
    except (ObjectNotFound, CorruptionError, ValueError, TypeError, AttributeError):
        return set()  # carry them all again: a copy too many is harmless


# ---- the dry run's estimate ----------------------------------------------------------------


def _estimate(vault: Vault, result: RecompressResult) -> None:
    """Estimate each new band's size: compress up to `SAMPLES_PER_BAND` of its frames below
    the target (`SAMPLE_FRAMES` in all) at the target level, as the rewrite would; scale its
    frames below the target by the ratio found (a band with no sample left: the ratio of
    all samples), keep the others' size, and count only the live share of its files."""
    budget = SAMPLE_FRAMES
    ratios: dict[BandId, tuple[int, int]] = {}
    for c in result.bands:
        if c.replaced_by is not None:
            continue
        info = vault.catalog.band(c.band)
        assert info is not None  # chosen from the catalog just now
        picked = _sample_frames(info, c, result.level)[: max(0, budget)]
        budget -= len(picked)
        old = new = 0
        for i in picked:
            sizes = _compress_sample(vault, info, i, result.level)
            if sizes is not None:
                old, new = old + sizes[0], new + sizes[1]
                c.sampled += 1
        if old:
            ratios[c.band] = (old, new)
    result.sampled_frames = sum(c.sampled for c in result.bands)
    total_old = sum(o for o, _ in ratios.values())
    overall = sum(n for _, n in ratios.values()) / total_old if total_old else 1.0
    for c in result.bands:
        if c.replaced_by is not None:
            c.estimate = 0  # its copy is on the store already: the old band only goes
            continue
        o, n = ratios.get(c.band, (0, 0))
        ratio = n / o if o else overall
        info = vault.catalog.band(c.band)
        assert info is not None
        data = info.frames[:-1]
        low = sum(cs for (cs, _), lv in zip(data, c.levels, strict=True) if _low(lv, result.level))
        other = sum(cs for cs, _ in data) - low
        tail = info.size - sum(cs for cs, _ in data)  # the catalog frame and the seek table
        c.estimate = round((low * ratio + other) * _live_share(c)) + tail


def _live_share(c: Chosen) -> float:
    total = c.plan.live_bytes + c.plan.dead_bytes
    return c.plan.live_bytes / total if total else 1.0


def _sample_frames(info: BandInfo, c: Recompressed, target: int) -> list[int]:
    """Up to `SAMPLES_PER_BAND` data frames below the target, spread over the band; full
    frames only (a streamed file's header gets a tiny frame of its own)."""
    low = [i for i, lv in enumerate(c.levels) if _low(lv, target)]
    if not low:
        return []
    largest = max(info.frames[i][1] for i in low)
    full = [i for i in low if info.frames[i][1] * 2 >= largest]
    step = max(1, len(full) // SAMPLES_PER_BAND)
    return full[step // 2 :: step][:SAMPLES_PER_BAND]


def _compress_sample(vault: Vault, info: BandInfo, index: int, target: int) -> tuple[int, int] | None:
    """(compressed size now, compressed size at the target) of one data frame; None when
    it cannot be read (the estimate does without it)."""
    frame = bandfmt.frames_from_sizes(info.frames)[index]
    try:
        data = vault.store.get_range(band_key(info.band), frame.compressed_offset, frame.compressed_size)
        raw = bandfmt.decompress_frames(data, [frame])
    except (ObjectNotFound, ObjectArchived, CorruptionError):
        return None
    packed, _ = compress_frame(raw, target, fixed_window=True)
    return frame.compressed_size, len(packed)
