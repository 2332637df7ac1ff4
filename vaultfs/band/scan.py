"""Scanning a whole band file front to back: `scan_band_file`.

Two callers need every byte of a band checked rather than one blob read: ``vaultfs check
--read-data`` (strict: any damage is an error) and rung 5 of the rebuild ladder (salvage:
keep every member that still verifies). Both read the file once for its SHA-256, then
walk it with `salvage` (frames from the seek table or their own headers, the tar stream
resynchronised after a hole), parse the catalog member with `catalog.parse_catalog` and
its blob list with `catalog.catalog_blobs`, and hold the re-hashed members against it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultfs.band.catalog import CATALOG_MEMBER, catalog_blobs, parse_catalog
from vaultfs.band.frames import Frame
from vaultfs.band.salvage import (
    ZSTD_MAGIC,
    SalvagedMember,
    salvage_frame_prefix,
    salvage_frames,
    salvage_members,
)
from vaultfs.errors import CorruptionError
from vaultfs.model import TreeId, tree_id

BlobRow = tuple[bytes, int, int]  # (sha256, offset, size) of a member's content


@dataclass(slots=True)
class ScannedBand:
    size: int
    sha256: bytes
    frames: tuple[tuple[int, int], ...]
    blobs: list[BlobRow]  # re-hashed members: (sha256, offset, size)
    catalog: dict[str, Any] | None
    problems: list[str]
    damage: list[str] = field(default_factory=list)  # what of the band is damaged
    lost: list[BlobRow] = field(default_factory=list)  # listed, not recovered
    trees: dict[TreeId, bytes] = field(default_factory=dict)  # from a damaged catalog


@dataclass(slots=True)
class _Walk:
    """What one pass over the file found, before the catalog is held against it."""

    size: int
    sha256: bytes
    found: tuple[Frame, ...]
    damage: list[str]
    members: list[SalvagedMember]
    tail: bytes  # the last zstd frame's bytes (salvage only: a lost catalog's trees)


def scan_band_file(path: Path, band: str, *, salvage: bool = False) -> ScannedBand:
    """Read a band file front to back: its SHA-256, its frames, every tar member
    re-hashed, and the catalog (the last member), which must agree with the members.

    Without `salvage`: CorruptionError when any frame is damaged or a member the catalog
    lists is not there with its SHA-256 (`check --read-data`). With it, what can be read
    is returned: members before and after a damaged frame (the walk resynchronises at the
    next frame and the next valid tar header), `damage` saying what was wrong and `lost`
    the members the catalog lists that could not be re-hashed. A member is kept only when
    its bytes hash to what the catalog says for it (or, without a catalog, the hash is
    its blob id: content-addressed). CorruptionError only when nothing of the band makes
    sense (a catalog naming members that are not in the band)."""
    walk = _walk_file(path, band, salvage)
    damage = walk.damage
    problems: list[str] = []
    catalog, blobs, broken = _sort_members(walk.members, band, problems)
    if broken:
        damage.append(f"{broken} member(s) overlap the damage")
    trees: dict[TreeId, bytes] = {}
    if catalog is None and damage:
        trees = _salvage_trees(salvage_frame_prefix(walk.tail)) if walk.tail else {}
        damage.append(
            "its catalog is lost"
            + (f" (but {len(trees)} directory listing(s) in it verify)" if trees else "")
        )
    lost: list[BlobRow] = []
    if catalog is not None:
        blobs, lost = _hold_against_catalog(catalog, blobs, band, damage, problems)
    if damage and not salvage:
        raise CorruptionError(f"band {band}: damaged: " + "; ".join(damage))
    frames = _readable_frames(walk.found, walk.size)
    return ScannedBand(walk.size, walk.sha256, frames, blobs, catalog, problems, damage, lost, trees)


def _walk_file(path: Path, band: str, salvage: bool) -> _Walk:
    """Hash the whole file, then find its frames and members (`salvage`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
        size = f.tell()
        if size == 0:
            raise CorruptionError(f"band {band}: the band object is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            found, damage = salvage_frames(mm)
            members = list(salvage_members(mm, found, damage))
            # The catalog is the last zstd frame (what follows may be a broken seek table).
            last = next(
                (
                    fr
                    for fr in reversed(found)
                    if mm[fr.compressed_offset : fr.compressed_offset + 4] == ZSTD_MAGIC
                ),
                None,
            )
            tail = (
                bytes(mm[last.compressed_offset : last.compressed_offset + last.compressed_size])
                if last is not None and salvage
                else b""
            )
    return _Walk(size, h.digest(), found, damage, members, tail)


def _sort_members(
    members: list[SalvagedMember], band: str, problems: list[str]
) -> tuple[dict[str, Any] | None, list[BlobRow], int]:
    """The catalog (None when its member is damaged or does not parse), the re-hashed
    blob members, and how many members overlap the damage."""
    catalog: dict[str, Any] | None = None
    blobs: list[BlobRow] = []
    broken = 0
    for m in members:
        if m.name == CATALOG_MEMBER.encode():
            if m.content is None:
                continue
            try:
                catalog = parse_catalog(m.content, band)
            except CorruptionError as e:
                problems.append(f"catalog member does not parse: {e.message}")
            continue
        if m.sha256 is None:
            broken += 1
        else:
            blobs.append((m.sha256, m.offset, m.size))
    return catalog, blobs, broken


def _hold_against_catalog(
    catalog: dict[str, Any], blobs: list[BlobRow], band: str, damage: list[str], problems: list[str]
) -> tuple[list[BlobRow], list[BlobRow]]:
    """The members that hash to what the catalog says, and the ones it lists that are not
    there (`damage` says why). CorruptionError when the catalog is malformed, or when it
    disagrees with an undamaged band's members."""
    listed = {(loc.sha256, loc.offset, loc.size) for _, loc in catalog_blobs(catalog, band)}
    stray = set(blobs) - listed
    if stray and not damage:
        problems.append("catalog disagrees with the re-hashed members")
        raise CorruptionError(f"band {band}: its catalog disagrees with its members")
    if stray:  # members whose bytes do not hash to what the catalog says: damaged
        damage.append(f"{len(stray)} member(s) fail their SHA-256")
        blobs = [b for b in blobs if b not in stray]
    lost = sorted(listed - set(blobs), key=lambda b: b[1])
    if lost and not damage:
        damage.append(f"{len(lost)} member(s) of its catalog are not in it")
    return blobs, lost


_TREE_JSON = re.compile(rb'"([0-9a-f]{64})":"((?:[^"\\]|\\.)*)"')


def _salvage_trees(text: bytes) -> dict[TreeId, bytes]:
    """The directory listings found in what is left of a damaged catalog: every
    ``"<tree id>":"<encoding>"`` pair whose encoding hashes to its id (nothing else of
    such a catalog is trusted: a tree proves itself, a version copy would not)."""
    out: dict[TreeId, bytes] = {}
    for m in _TREE_JSON.finditer(text):
        try:
            enc = json.loads(b'"' + m.group(2) + b'"').encode("utf-8", "surrogateescape")
        except (ValueError, UnicodeError):
            continue
        tid = TreeId(bytes.fromhex(m.group(1).decode()))
        if tree_id(enc) == tid:
            out[tid] = enc
    return out


def _readable_frames(found: tuple[Frame, ...], size: int) -> tuple[tuple[int, int], ...]:
    """The (compressed, uncompressed) sizes of a band's frames as `BandInfo.frames`, from
    what a scan found. When the tail or a frame's structure is broken, the frames whose
    place in the stream is known are kept and one last frame (read as the catalog; it
    fails to decompress) spans the rest up to a seek table of the right length, so the
    band's size checks out and the recovered blobs can be read by range as usual."""
    known: list[tuple[int, int]] = []
    for fr in found:
        if fr.uncompressed_size < 0:
            break
        known.append((fr.compressed_size, fr.uncompressed_size))
    if sum(c for c, _ in known) + 17 + 8 * len(known) == size:
        return tuple(known)
    while known:
        rest = size - sum(c for c, _ in known) - 17 - 8 * (len(known) + 1)
        if rest > 0:
            return (*known, (rest, 0))
        known.pop()
    return ()
