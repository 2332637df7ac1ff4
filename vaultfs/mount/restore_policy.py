"""The mount's restores: who may start one, the daily budget, the band cache, a poll.

Nothing here knows FUSE or trio: `vaultfs.mount` calls the blocking methods
(marked "blocking": they talk to the store) from worker threads, and the rest
from the trio loop.

* `ProcessMatcher` — whether the process that opened a file is one whose opens
  never start a restore (docs/mount.md): file-manager thumbnailers and indexers.
* `OnDemandRestores` — the guards (``[mount].auto_restore``, the opener, the
  state, ``restore_budget_per_day``) and the request itself.
* `BandCache` — whole bands in ``<state_dir>/cache``, bounded by
  ``[mount].cache_size``, least recently used out first, never a band in use.
* `poll_restores` — one look at every band in flight (the watcher's step).

The budget is kept in the local catalog (``meta`` ``mount_restore_budget``, see
`vaultfs.catalog.schema`), so a remount does not reset it; it counts the bytes
of the bands requested per UTC day.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from vaultfs import archive
from vaultfs.config import Config
from vaultfs.errors import CorruptionError
from vaultfs.model import BandId, BandInfo
from vaultfs.mount.askers import process_facts
from vaultfs.vault import Vault

log = logging.getLogger("vaultfs.mount")

THUMBNAILERS_DIR = Path("/usr/share/thumbnailers")
COMM_LEN = 15  # the kernel truncates a process's comm to 15 characters
# A person's copy out of the mount runs in these: never match them (docs/mount.md).
FILE_MANAGERS = frozenset(
    {"thunar", "nautilus", "pcmanfm", "pcmanfm-qt", "dolphin", "kioslave5", "kioworker", "caja", "nemo"}
)


# ---- who opened the file -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessRule:
    name: str  # matches comm (truncated to 15) or the executable's basename
    word: str | None = None  # NAME:WORD: WORD must also be in one of the arguments

    def __str__(self) -> str:
        return self.name if self.word is None else f"{self.name}:{self.word}"


def parse_rules(names: Iterable[str], thumbnailers: Path | None = THUMBNAILERS_DIR) -> list[ProcessRule]:
    """``[mount].no_restore_processes`` plus every ``Exec=`` program of ``*.thumbnailer``.

    A bare file-manager name is dropped with a warning: a person's copy runs in it.
    """
    rules: list[ProcessRule] = []
    for raw in names:
        name, _, word = raw.partition(":")
        rule = ProcessRule(name, word or None)
        if rule.word is None and name.lower() in FILE_MANAGERS:
            log.warning(
                "no_restore_processes: ignoring %r, a file manager: copies out of the "
                "mount run in it (name a thumbnailer instead, or NAME:WORD)",
                raw,
            )
            continue
        rules.append(rule)
    for program in thumbnailer_programs(thumbnailers):
        if program.lower() not in FILE_MANAGERS and all(r.name != program for r in rules):
            rules.append(ProcessRule(program))
    return rules


def thumbnailer_programs(directory: Path | None) -> list[str]:
    """The basenames of the programs the ``Exec=`` lines of ``DIR/*.thumbnailer`` run."""
    if directory is None or not directory.is_dir():
        return []
    out = []
    for path in sorted(directory.glob("*.thumbnailer")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "Exec" and value.split():
                program = os.path.basename(value.split()[0])
                if program and program not in out:
                    out.append(program)
    return out


class ProcessMatcher:
    """Matches the process behind a FUSE request against `ProcessRule`s, via /proc."""

    def __init__(self, rules: list[ProcessRule], proc: Path = Path("/proc")) -> None:
        self.rules = rules
        self.proc = proc

    def match(self, pid: int) -> ProcessRule | None:
        """The rule `pid` (a thread id is fine) matches; None if none, or it is gone."""
        if pid <= 0 or not self.rules:
            return None
        facts = process_facts(pid, self.proc)
        if facts is None:
            return None
        comm, exe = facts[0], os.path.basename(facts[1])
        base = self.proc / str(pid)
        args: list[str] | None = None
        for rule in self.rules:
            if comm != rule.name[:COMM_LEN] and exe != rule.name:
                continue
            if rule.word is None:
                return rule
            if args is None:
                try:
                    raw = (base / "cmdline").read_bytes()
                except OSError:
                    raw = b""
                args = [a.decode(errors="replace") for a in raw.split(b"\0")]
            if any(rule.word in a for a in args):
                return rule
        return None


# ---- requests --------------------------------------------------------------------------


def utc_day(ns: int | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime((ns if ns is not None else time.time_ns()) / 1e9))


class OnDemandRestores:
    """The restore an open of an unreadable file may start, and its guards."""

    def __init__(self, vault: Vault, matcher: ProcessMatcher) -> None:
        self.vault = vault
        self.settings = vault.config.mount
        self.matcher = matcher

    def refusal(self, band: BandId, pid: int) -> str | None:
        """Why an open of `band` by `pid` starts no restore; None: request it. Reads /proc."""
        info = self.vault.catalog.band(band)
        if info is None:
            raise CorruptionError(f"band {band} is not in the local catalog: run `vaultfs check`")
        if info.state != "archived":
            return f"band is {info.state}"
        if not self.settings.auto_restore:
            return "[mount].auto_restore is off"
        rule = self.matcher.match(pid)
        if rule is not None:
            return f"opened by a process matching no_restore_processes {str(rule)!r}"
        return None

    def request(self, band: BandId) -> tuple[str, BandInfo | None]:
        """Blocking: charge the day's budget, ask S3 for the restore; what happened (for the
        log), and the band's new record if it was requested."""
        info = self.vault.catalog.band(band)
        if info is None or info.state != "archived":
            return f"not requested: band is {info.state if info else 'unknown'}", None
        day, limit = utc_day(), self.settings.restore_budget_per_day
        with self.vault.catalog.writer() as w:
            charged = w.charge_restore_budget(day, info.size, limit)
        if not charged:
            spent = self.vault.catalog.restore_budget_spent(day)
            return (
                f"not requested: today's restore budget is spent ({spent} of {limit} bytes "
                f"used, the band is {info.size}; [mount].restore_budget_per_day)"
            ), None
        s3 = self.vault.config.s3
        try:
            done = archive.request_restores(self.vault, [info], s3.restore_tier, s3.restore_days)
        except BaseException:
            with self.vault.catalog.writer() as w:
                w.charge_restore_budget(day, -info.size, limit)
            raise
        if not done:
            with self.vault.catalog.writer() as w:
                w.charge_restore_budget(day, -info.size, limit)
            return "not requested: already asked for", None
        return f"requested ({s3.restore_tier}, {s3.restore_days} days, {info.size} bytes)", done[0]

    def budget_line(self) -> str:
        s = self.settings
        if not s.auto_restore:
            return "auto-restore: off ([mount].auto_restore)"
        spent = self.vault.catalog.restore_budget_spent(utc_day())
        return f"auto-restore: on; today's budget {spent} of {s.restore_budget_per_day} bytes used (UTC day)"


# ---- the band cache --------------------------------------------------------------------


class BandCache:
    """Whole bands in ``<state_dir>/cache``: bounded, least recently used out first.

    "Used" is the later of the cache file's mtime (its fetch) and the last open
    this mount saw (`last_used`). Evicting a band gives it back its state on S3:
    ``restored`` while its restored copy lasts, else ``archived`` (or ``standard``).
    """

    def __init__(self, vault: Vault, limit: int) -> None:
        self.vault = vault
        self.limit = limit

    def path(self, band: BandId) -> Path:
        return self.vault.cached_band_path(band)

    def cached(self) -> list[BandInfo]:
        return [b for b in self.vault.catalog.bands() if b.state == "cached"]

    def make_room(
        self, size: int, in_use: Mapping[BandId, int], last_used: Mapping[BandId, int]
    ) -> list[BandInfo] | None:
        """Evict until `size` more bytes fit; the evicted bands, or None if they cannot fit."""
        if size > self.limit:
            return None
        present = self.cached()
        total = sum(b.size for b in present)
        if total + size <= self.limit:
            return []

        def used(b: BandInfo) -> int:
            try:
                mtime = self.path(b.band).stat().st_mtime_ns
            except OSError:
                mtime = 0
            return max(mtime, last_used.get(b.band, 0))

        candidates = sorted((b for b in present if not in_use.get(b.band)), key=used)
        victims = []
        for b in candidates:
            if total + size <= self.limit:
                break
            victims.append(b)
            total -= b.size
        if total + size > self.limit:
            return None
        return [self.evict(b) for b in victims]

    def evict(self, band: BandInfo, now: int | None = None) -> BandInfo:
        state = archive.state_without_cache(band, now)
        new = replace(band, state=state, cached=False)
        with self.vault.catalog.writer() as w:
            w.put_band(new)
        self.path(band.band).unlink(missing_ok=True)
        log.info("cache: evicted band %s (%d bytes), now %s", band.band, band.size, state)
        return new


# ---- the watcher's step -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PollResult:
    changed: list[BandInfo]  # every band whose state the poll changed
    ready: list[BandInfo]  # restoring → restored in this poll
    to_fetch: list[BandInfo]  # restored, not cached (fetch them when [mount].fetch_restored)


def poll_restores(vault: Vault) -> PollResult:
    """Blocking: HEAD every restoring/restored band and record what S3 says."""
    changed, ready = [], []
    for band in archive.in_flight(vault):
        new = archive.refresh(vault, band)
        if new.state != band.state:
            changed.append(new)
            log.info("restore of band %s: %s -> %s", band.band, band.state, new.state)
            if band.state == "restoring" and new.state == "restored":
                ready.append(new)
    fetch = [b for b in archive.in_flight(vault) if b.state == "restored"]
    return PollResult(changed, ready, fetch)


def fetch_band(vault: Vault, band: BandInfo) -> BandInfo:
    """Blocking: the whole band into the cache, verified (`archive.fetch_to_cache`)."""
    return archive.fetch_to_cache(vault, band)


def config_summary(config: Config) -> str:
    m = config.mount
    return (
        f"every {m.poll_interval:g} s; fetch_restored {'on' if m.fetch_restored else 'off'}, "
        f"cache_size {m.cache_size} bytes"
    )
