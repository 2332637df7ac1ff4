"""The catalog: the band's last member, ``.vaultfs/catalog.json``, that lists its blobs.

The catalog member's header, its JSON, padding and tar's end of archive (two zero blocks)
form the band's single last frame, which begins on a fresh frame; so reading the tail of
a band gives its whole table of contents. The JSON is canonical (``ensure_ascii``, sorted
keys, no spaces), ``{"format": 1, "band": <id>, "blobs": [{"name", "offset", "sha256",
"size"}, ...], "body_sha256": <hex of every compressed byte before this frame>}`` plus the
caller's extra keys (a snapshot's last band adds ``version`` and ``trees``), and
``"frame_levels"``: the zstd level of each data frame, as runs ``[[level, frames], ...]``
in frame order (`level_runs`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vaultfs.band.frames import FRAME_SIZE_MAX
from vaultfs.band.tar import BLOCK, MemberMeta, member_header, parse_member
from vaultfs.errors import CorruptionError

CATALOG_MEMBER = ".vaultfs/catalog.json"
CATALOG_FORMAT = 1
BAND_KEYS = frozenset({"format", "band", "blobs", "body_sha256", "frame_levels"})  # not the caller's


@dataclass(frozen=True, slots=True)
class BlobLocation:
    """Where one blob's content lies in a band's uncompressed tar stream."""

    sha256: bytes  # 32 raw bytes
    offset: int
    size: int


def new_band_id(now: datetime | None = None) -> str:
    """'YYYYMMDDTHHMMSSZ-<8 random hex>': sorts by creation time (UTC; naive means UTC)."""
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is not None:
        now = now.astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def check_extra_keys(extra: dict[str, Any]) -> None:
    """ValueError if the caller's extra catalog keys would overwrite the band's own."""
    clash = BAND_KEYS & extra.keys()
    if clash:
        raise ValueError(f"extra keys clash with band keys: {sorted(clash)}")


def level_runs(levels: Sequence[int]) -> list[list[int]]:
    """``[3, 3, 3, -1, 5]`` → ``[[3, 3], [-1, 1], [5, 1]]``: each data frame's level, as
    runs of equal levels in frame order (a band of 256 frames at one level: one run)."""
    runs: list[list[int]] = []
    for level in levels:
        if runs and runs[-1][0] == level:
            runs[-1][1] += 1
        else:
            runs.append([level, 1])
    return runs


def levels_from_catalog(catalog: bytes, label: str) -> tuple[int, ...]:
    """Each data frame's level from a catalog's ``frame_levels`` (``()`` in bands written
    before it was recorded); CorruptionError if it is not a list of runs."""
    return frame_levels(parse_catalog(catalog, label), label)


def frame_levels(doc: dict[str, Any], label: str) -> tuple[int, ...]:
    """Each data frame's level from a parsed catalog (or sidecar) document."""
    try:
        return tuple(int(level) for level, count in doc.get("frame_levels", []) for _ in range(int(count)))
    except (TypeError, ValueError) as e:
        raise CorruptionError(f"band {label}: bad frame_levels in the catalog: {e}") from e


def catalog_json(
    band_id: str, body_sha256: str, blobs: Sequence[BlobLocation], names: Sequence[str], extra: dict[str, Any]
) -> bytes:
    """The catalog document, exactly as ``json.dumps(doc, ensure_ascii=True,
    sort_keys=True, separators=(",", ":"))`` writes it; the blob list (tens of
    thousands of entries in a band of small files) is written directly instead of
    through one dict per blob."""
    marker = "\x00blobs\x00"
    doc = {"format": CATALOG_FORMAT, "band": band_id, "blobs": marker, "body_sha256": body_sha256, **extra}
    text = json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    quote = json.encoder.encode_basestring_ascii
    listed = (
        "["
        + ",".join(
            f'{{"name":{quote(nm)},"offset":{b.offset},"sha256":"{b.sha256.hex()}","size":{b.size}}}'
            for b, nm in zip(blobs, names, strict=True)
        )
        + "]"
    )
    return text.replace(json.dumps(marker), listed, 1).encode("ascii")


def catalog_frame(catalog: bytes) -> bytearray:
    """The uncompressed last frame: the catalog member (mtime now) and end of archive."""
    meta = MemberMeta(0o644, 0, 0, time.time_ns() // 10**9 * 10**9)
    header = member_header(CATALOG_MEMBER.encode(), meta, len(catalog))
    padding = b"\0" * (-len(catalog) % BLOCK + 2 * BLOCK)
    if len(header) + len(catalog) + len(padding) > FRAME_SIZE_MAX:
        raise ValueError("catalog too large for one frame")
    last = bytearray(header)  # one copy of the catalog, not three (peak memory)
    last += catalog
    last += padding
    return last


def parse_catalog_frame(stream: bytes) -> bytes:
    """The catalog JSON from the decompressed last frame; CorruptionError unless the frame
    is exactly the catalog member and end of archive."""
    try:
        name, pos, size = parse_member(stream)
    except (ValueError, IndexError) as e:
        raise CorruptionError(f"bad catalog member header: {e}") from e
    if (
        name != CATALOG_MEMBER.encode()
        or stream[pos + size :] != bytes(len(stream) - pos - size)
        or len(stream) - pos - size < 2 * BLOCK
    ):
        raise CorruptionError("last frame is not the catalog and end of archive")
    return stream[pos : pos + size]


def parse_catalog(data: bytes, label: str) -> dict[str, Any]:
    """The catalog document of band `label`; CorruptionError unless it is one we write."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise CorruptionError(f"band {label}: catalog is not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
        raise CorruptionError(f"band {label}: unknown catalog format")
    return doc


def catalog_blobs(doc: dict[str, Any], label: str) -> tuple[tuple[str, BlobLocation], ...]:
    """(member name, location) of every blob a parsed catalog lists."""
    try:
        return tuple(
            (b["name"], BlobLocation(bytes.fromhex(b["sha256"]), b["offset"], b["size"]))
            for b in doc["blobs"]
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptionError(f"band {label}: bad catalog entry: {e}") from e
