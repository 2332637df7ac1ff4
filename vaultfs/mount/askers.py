"""Who asked for a restore, in words: the opener, the refusal log, the hooks' environment.

Plain Python (no FUSE, no trio), used by the restore service (`vaultfs.mount.lifecycle`),
/.vaultfs/status (`vaultfs.mount.status`) and ``vaultfs restore status``:

* `Opener` — an open through the mount that found its band unreadable: the process
  (pid, uid from the FUSE request) and the file (``collection@vN/path``).
* `process_facts` — a process's ``comm`` and executable, from /proc (also what
  `restore_policy.ProcessMatcher` matches).
* `RefusalLog` — refused opens are logged once per (process, band) per minute, with
  a count: a thumbnailer retrying the same files hundreds of times writes one line
  a minute, not one per open (docs/mount.md).
* `hook_env` — the environment of ``[mount].on_restore_requested`` and
  ``on_restore_ready`` (``VAULTFS_BAND``, ``VAULTFS_FILES`` …; docs/mount.md).
* `asker_lines` — the files that asked for a band's restore, for the status outputs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vaultfs.catalog import Catalog
from vaultfs.model import BandId, BandInfo, RestoreAsker, RestoreAskers
from vaultfs.output import display_path, iso_utc

PROC = Path("/proc")
REFUSAL_INTERVAL_NS = 60 * 10**9  # refused opens: one line per (process, band) per minute


@dataclass(frozen=True, slots=True)
class Opener:
    """The process behind an open (FUSE's request context) and the file it opened."""

    pid: int
    uid: int
    file: str  # ``collection@vN/path`` (exact: to_text), "" if unknown


def process_facts(pid: int, proc: Path = PROC) -> tuple[str, str] | None:
    """(comm, executable path) of `pid`; None if it is gone. The executable is "" when
    /proc does not show it (another user's process, for a mount not run as root)."""
    base = proc / str(pid)
    try:
        comm = (base / "comm").read_text(errors="replace").rstrip("\n")
    except OSError:
        return None
    try:
        exe = os.readlink(base / "exe").removesuffix(" (deleted)")
    except OSError:
        exe = ""
    return comm, exe


def asker(opener: Opener, now_ns: int | None = None) -> RestoreAsker:
    """The record of `opener` (its process looked up now, while it is alive)."""
    comm, exe = process_facts(opener.pid) or ("?", "")
    return RestoreAsker(opener.file, opener.pid, opener.uid, comm, exe, now_ns or time.time_ns())


def describe(a: RestoreAsker) -> str:
    """``process 4242 (cp, /usr/bin/cp, uid 1000) opening photos@v1/a.jpg``, for the log."""
    exe = f", {display_path(a.exe)}" if a.exe else ""
    return f"process {a.pid} ({display_path(a.comm)}{exe}, uid {a.uid}) opening {display_path(a.file)}"


# ---- refused opens: one line a minute ------------------------------------------------------


@dataclass(slots=True)
class _Window:
    logged_ns: int  # when the last line for this (process, band) was written
    count: int = 0  # refusals since then, not written


class RefusalLog:
    """Rate limits the log lines of refused opens: per (pid, band), the first refusal is
    written at once; those in the next minute are counted, and the count goes with the
    next line written for it (or `flush`: when another refusal finds the minute over,
    and at unmount), so nothing is dropped silently."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self.clock = clock
        self._windows: dict[tuple[int, BandId], _Window] = {}

    def refused(self, pid: int, band: BandId, line: str) -> list[str]:
        """The lines to log now for this refusal (often none)."""
        now = self.clock()
        key = (pid, band)
        out = self._expired(now, keep=key)
        w = self._windows.get(key)
        if w is not None and now - w.logged_ns < REFUSAL_INTERVAL_NS:
            w.count += 1
            return out
        if w is not None and w.count:
            since = iso_utc(w.logged_ns)
            line += f" (and {w.count} more refused open(s) by process {pid} in band {band} since {since})"
        self._windows[key] = _Window(now)
        return [*out, line]

    def flush(self) -> list[str]:
        """The counts not yet written (at unmount)."""
        return self._expired(None)

    def _expired(self, now: int | None, keep: tuple[int, BandId] | None = None) -> list[str]:
        out = []
        for key, w in list(self._windows.items()):
            if key == keep or (now is not None and now - w.logged_ns < REFUSAL_INTERVAL_NS):
                continue
            del self._windows[key]
            if w.count:
                out.append(
                    f"open(s) refused: process {key[0]} was refused {w.count} more open(s) of files "
                    f"in band {key[1]} since {iso_utc(w.logged_ns)} (no restore requested)"
                )
        return out


# ---- the hooks' environment --------------------------------------------------------------------


def hook_env(event: str, band: BandInfo, askers: Iterable[RestoreAsker]) -> dict[str, str]:
    """What a hook learns besides the band id (its last argument), as environment variables.

    ``VAULTFS_FILES`` holds one file per line, escaped as in human output
    (`display_path`: a newline in a name arrives as ``\\n``), so every line is one file.
    ``VAULTFS_PID``/``VAULTFS_UID`` are the first asker's (for ``requested``: the open
    that requested it), ``VAULTFS_UIDS`` every distinct uid, space-separated.
    """
    found = list(askers)
    r = band.restore
    uids = list(dict.fromkeys(a.uid for a in found))
    return {
        "VAULTFS_EVENT": event,
        "VAULTFS_BAND": band.band,
        "VAULTFS_SIZE": str(band.size),
        "VAULTFS_TIER": r.tier if r else "",
        "VAULTFS_READY_BY": iso_utc(r.expected_ns) if r and r.expected_ns else "",
        "VAULTFS_FILES": "\n".join(display_path(a.file) for a in found),
        "VAULTFS_PID": str(found[0].pid) if found else "",
        "VAULTFS_UID": str(found[0].uid) if found else "",
        "VAULTFS_UIDS": " ".join(map(str, uids)),
        "VAULTFS_COMM": found[0].comm if found else "",
    }


def current_askers(catalog: Catalog, band: BandInfo) -> RestoreAskers | None:
    """Who asked for `band`'s current restore; None if nobody through the mount."""
    record = catalog.restore_askers(band.band)
    return record if record is not None and record.about(band) else None


def asker_lines(record: RestoreAskers | None, indent: str = "    ") -> list[str]:
    """``asked for by: photos@v1/a.jpg (cp, pid 4242, uid 1000, at …)`` lines."""
    if record is None:
        return []
    lines = [f"{indent}asked for by:"]
    lines += [
        f"{indent}  {display_path(a.file)} ({display_path(a.comm)}, pid {a.pid}, uid {a.uid}, "
        f"at {iso_utc(a.at_ns)})"
        for a in record.askers
    ]
    if record.more:
        lines.append(f"{indent}  and {record.more} more file(s)")
    return lines


def askers_json(record: RestoreAskers | None) -> dict[str, object]:
    """The ``asked_by`` of a band in ``--json`` and /.vaultfs/restores.json."""
    if record is None:
        return {"asked_by": [], "asked_by_more": 0}
    return {
        "asked_by": [{**a.to_json(), "at": iso_utc(a.at_ns)} for a in record.askers],
        "asked_by_more": record.more,
    }
