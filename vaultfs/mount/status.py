"""The files under /.vaultfs/: what the mount says about itself (no FUSE here).

* ``status`` (`status_text`) — human-readable: the vault, its collections and
  versions, bands by state, restores in flight, and whatever lines the mount adds
  (`MountInfo.status_lines`: the restore watcher and budget);
* ``restores.json`` (`restores_json`) — every band restoring, restored or cached,
  as ``vaultfs restore status --json`` shows them (with the files that asked for each);
* `state_text` — a band's state in words (also ``user.vaultfs.state``);
* `StatusFile` — an open one of these files: the text rendered at open.

Kept apart from the view (`vaultfs.mount.view`), which owns the nodes of these
files and calls these functions for their size and content: this is reporting,
read from the catalog on each call, not the shape of the filesystem.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vaultfs import archive
from vaultfs.catalog import Catalog
from vaultfs.model import BandInfo
from vaultfs.mount.askers import asker_lines, askers_json, current_askers


@dataclass
class MountInfo:
    """Facts for /.vaultfs/status that the caller knows (the VFS cannot see them)."""

    store: str = ""
    pid: int = field(default_factory=os.getpid)
    started_ns: int = field(default_factory=time.time_ns)
    # More lines for /.vaultfs/status (the restore watcher and budget, from vaultfs.mount).
    status_lines: Callable[[], list[str]] = field(default=lambda: [])


class StatusFile:
    """An open file under /.vaultfs/ (status, restores.json): the text rendered at open."""

    def __init__(self, text: bytes) -> None:
        self.text = text

    def read(self, offset: int, length: int) -> bytes:
        return self.text[offset : offset + length]

    read_view = read


def in_flight(catalog: Catalog) -> list[BandInfo]:
    """Bands restoring, restored or cached (the catalog's view; the watcher refreshes it)."""
    return [b for b in catalog.bands() if b.state in ("restoring", "restored", "cached")]


def restores_json(catalog: Catalog) -> bytes:
    """/.vaultfs/restores.json: like ``vaultfs restore status --json`` (without a HEAD)."""
    bands = in_flight(catalog)
    doc = {
        "bands": [{**archive.band_status_json(b), **askers_json(current_askers(catalog, b))} for b in bands],
        "bytes_pending": sum(b.size for b in bands if b.state == "restoring"),
        "bytes_ready": sum(b.size for b in bands if b.state != "restoring"),
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def status_text(catalog: Catalog, info: MountInfo, inode_count: int) -> bytes:
    """/.vaultfs/status: the vault, its collections and versions, bands by state."""
    lines = [
        f"vaultfs mount of {info.store}",
        f"pid {info.pid}, mounted since {_iso(info.started_ns)}",
        "",
        "collections:",
    ]
    for coll in catalog.collections():
        versions = catalog.versions(coll)
        last = versions[-1]
        lines.append(
            f"  {coll}: {len(versions)} version(s), latest v{last.number} "
            f"at {_iso(last.created_ns)}, {last.stats.files} files, "
            f"{last.stats.bytes} bytes"
        )
    states: dict[str, list[int]] = {}
    flight: list[BandInfo] = []
    for band in catalog.bands():
        acc = states.setdefault(band.state, [0, 0])
        acc[0] += 1
        acc[1] += band.size
        if band.state in ("restoring", "restored"):
            flight.append(band)
    lines += ["", "bands by state:"]
    lines += [f"  {s}: {n} band(s), {size} bytes" for s, (n, size) in sorted(states.items())]
    lines.append(f"  inodes in use: {inode_count}")
    lines += [
        "",
        f"restores in flight: {len(flight)} band(s), "
        f"{sum(b.size for b in flight)} bytes (/.vaultfs/restores.json)",
    ]
    for b in flight:  # each with the files that asked for it (`vaultfs.mount.askers`)
        lines += [f"  {b.band}: {state_text(b)}", *asker_lines(current_askers(catalog, b))]
    lines += info.status_lines()
    return ("\n".join(lines) + "\n").encode()


def state_text(info: BandInfo) -> str:
    """``available`` (standard), ``archived``, ``restoring (Bulk, ready by …)``,
    ``restored until …`` or ``cached``."""
    r = info.restore
    if info.state == "restoring":
        if r is None:
            return "restoring"
        return f"restoring ({r.tier}, ready by {_minute(r.expected_ns)})"
    if info.state == "restored":
        return f"restored until {_minute(r.expires_ns)}" if r and r.expires_ns else "restored"
    if info.state in ("archived", "cached"):
        return info.state
    return "available"


def _minute(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(ns / 1e9))


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))
