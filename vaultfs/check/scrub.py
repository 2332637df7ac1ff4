"""``vaultfs scrub``: re-read the least recently verified files of cold collections.

A snapshot trusts stat data (docs/architecture.md): a file whose size and times did not
change is not read, so bytes that rot on disk under an unchanged inode go unnoticed
until someone reads them. A scrub reads them: every file of the latest version of each
cold collection, least recently verified first, within a budget of bytes and time, each
re-read and hashed against the version's blob (`bitrot.rehash`, the comparison
``check --source`` makes too).

*Bytes.* A budget counts the bytes a run reads: a sparse file's data extents
(`Entry.blob_size`), not its holes, which are checked without being read (`rehash`). A
1 TiB disk image holding 1 GiB of data costs 1 GiB of a budget. Coverage (``--status``)
is about files, so it counts their sizes.

*Order.* One queue over every collection scrubbed, by when each file is due: the time it
was last verified plus its collection's ``scrub_days`` (never verified: due first), then
by collection and path. A run takes files from the front while they fit in what is left
of ``max_bytes`` and stops at the first that does not (the run's first file is always
read, so a file larger than any budget is verified too); ``max_time`` stops it between
files. Without a budget a run gets what a nightly run needs to cover every file in
``scrub_days`` (`nightly_budget`).

*What is recorded* (the catalog's ``scrub`` rows, schema.py): a match records the time;
bit rot records when it was found (the time verified stays, so the file stays at the
front of the queue and every scrub reports it until it matches again). Rows are
committed in batches (`BATCH_FILES` files or `BATCH_SECONDS`), each a short LMDB write
transaction: a killed scrub keeps what it verified before its last batch, and a
snapshot waits for the LMDB writer lock milliseconds at most. A scrub takes no vault
lock: it reads only the local source and the catalog, and every row names the content it
vouches for (`model.content_key`: the blob, and a sparse file's size and data map), so a
row written while a snapshot makes a new version never vouches for other content.
"""

from __future__ import annotations

import math
import os
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vaultfs import archive
from vaultfs.catalog import ScrubRow
from vaultfs.check.bitrot import Outcome, rehash, version_files
from vaultfs.config import CollectionConfig
from vaultfs.errors import EXIT_BITROT, EXIT_ERROR, EXIT_OK, EXIT_WARNINGS, SourceRefused
from vaultfs.model import ContentKey, Entry, VersionInfo, readable_now, to_text
from vaultfs.output import display_path, human_bytes, iso_utc
from vaultfs.vault import Vault, lost_message

DAY_NS = 86400 * 10**9
MIN_NIGHTLY_BYTES = 1024**3  # a default budget is at least this (small collections: all at once)
BATCH_FILES = 100  # verified rows committed together ...
BATCH_SECONDS = 5.0  # ... or after this long, whichever comes first
RESTORE_DIR = "/var/tmp/vaultfs-restore"  # where the suggested `restore fetch` writes


class Progress(Protocol):
    def reading(self, files_total: int, bytes_total: int) -> None: ...
    def advance(self, files: int, size: int) -> None: ...


class NoProgress:
    def reading(self, files_total: int, bytes_total: int) -> None:
        pass

    def advance(self, files: int, size: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Item:
    """One file of a collection's latest version, and when it was last verified (0: never)."""

    collection: CollectionConfig
    version: VersionInfo
    path: bytes
    entry: Entry
    verified_ns: int
    rot_ns: int

    @property
    def due_ns(self) -> int:
        return self.verified_ns + self.collection.scrub_days * DAY_NS if self.verified_ns else 0

    @property
    def content(self) -> ContentKey:
        """What a scrub row about this file vouches for (`files_of` keeps files with a blob)."""
        key = self.entry.content_key
        assert key is not None
        return key


def fetch_command(collection: str, version: int, path: bytes) -> str:
    """The ready-to-run `restore fetch` of one file of a version (the path shell-quoted)."""
    where = f"{RESTORE_DIR}/{collection}-v{version}"
    return f"vaultfs restore fetch {collection}@v{version} {shlex.quote(display_path(path))} --to {where}"


@dataclass(slots=True)
class Rot:
    """A file whose bytes differ from the version's with unchanged size and mtime."""

    collection: str
    path: bytes
    version: int
    band: str | None  # the band holding the good copy; None when the vault lost it too
    band_state: str = ""
    storage_class: str = ""
    restore_cost_usd: float | None = None  # archived: what restoring the band costs
    restore_hours: int | None = None
    lost: str = ""  # why the vault has no good copy either

    @property
    def target(self) -> str:
        return f"{self.collection}@v{self.version}"

    @property
    def fetch_command(self) -> str:
        return fetch_command(self.collection, self.version, self.path)

    @property
    def start_command(self) -> str | None:
        if self.band is None or self.band_state in ("standard", "restored", "cached"):
            return None
        return f"vaultfs restore start {self.target} {shlex.quote(display_path(self.path))}"

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "path": to_text(self.path),
            "version": self.version,
            "band": self.band,
            "band_state": self.band_state,
            "storage_class": self.storage_class,
            "restore_start": self.start_command,
            "restore_cost_usd": self.restore_cost_usd,
            "restore_hours": self.restore_hours,
            "restore_fetch": self.fetch_command if self.band else None,
            "lost": self.lost or None,
        }


@dataclass(slots=True)
class ScrubReport:
    """What one scrub run did."""

    budget_bytes: int  # every byte count of a run is bytes read (see the module docstring)
    planned_files: int = 0
    planned_bytes: int = 0
    verified_files: int = 0
    read_bytes: int = 0  # of the files verified and those found rotten
    rot: list[Rot] = field(default_factory=list)
    changed: list[tuple[str, bytes, str]] = field(default_factory=list)  # (collection, path, why)
    missing: list[tuple[str, bytes]] = field(default_factory=list)
    unreadable: list[tuple[str, bytes, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # collections whose root was refused
    notes: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # collection → version scrubbed
    out_of_time: bool = False
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """1: a collection's root was refused; 4: bit rot found (it outweighs 3: a schedule
        counts 3 as success, rot must fail it); 3: files could not be read; else 0."""
        if self.refused:
            return EXIT_ERROR
        return EXIT_BITROT if self.rot else EXIT_WARNINGS if self.unreadable else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "versions": self.versions,
            "budget_bytes": self.budget_bytes,
            "planned_files": self.planned_files,
            "planned_bytes": self.planned_bytes,
            "verified_files": self.verified_files,
            "read_bytes": self.read_bytes,
            "out_of_time": self.out_of_time,
            "rot": [r.to_json() for r in self.rot],
            "changed": [{"collection": c, "path": to_text(p), "why": w} for c, p, w in self.changed],
            "missing": [{"collection": c, "path": to_text(p)} for c, p in self.missing],
            "unreadable": [{"collection": c, "path": to_text(p), "why": w} for c, p, w in self.unreadable],
            "refused": self.refused,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def files_of(vault: Vault, collection: CollectionConfig, version: VersionInfo) -> list[Item]:
    """The regular files of `version` with their verification times. Second names of a
    hard-linked file are left out (`version_files`: no blob of their own)."""
    rows = vault.catalog.scrub_rows(collection.name)
    items = []
    for path, e in version_files(vault, version.root):
        if e.blob is None:
            continue
        row = rows.get(path)
        current = row is not None and row.content == e.content_key  # a row about other content: nothing
        items.append(
            Item(
                collection,
                version,
                path,
                e,
                row.verified_ns if current and row is not None else 0,
                row.rot_ns if current and row is not None else 0,
            )
        )
    return items


def nightly_budget(items: Iterable[Item]) -> int:
    """Bytes a nightly run must read to cover every file once in its collection's scrub_days
    (at least `MIN_NIGHTLY_BYTES`)."""
    need = 0.0
    for it in items:
        need += it.entry.blob_size / it.collection.scrub_days
    return max(math.ceil(need), MIN_NIGHTLY_BYTES)


def queue(vault: Vault, collections: list[CollectionConfig], report: ScrubReport) -> list[Item]:
    """Every file of the collections' latest versions, the most overdue first. A collection
    whose root is refused (missing, empty: is the volume mounted?) is left out and named in
    `report.refused`; one without versions gets a note."""
    from vaultfs.snapshot import check_root  # the same refusal as a snapshot's

    items: list[Item] = []
    for coll in collections:
        latest = vault.catalog.latest_version(coll.name)
        if latest is None:
            report.notes.append(f"{coll.name} has no versions yet: nothing to scrub")
            continue
        try:
            check_root(coll, done="scrubbed")
        except SourceRefused as e:
            report.refused.append(e.message)
            continue
        report.versions[coll.name] = latest.number
        items += files_of(vault, coll, latest)
    items.sort(key=lambda it: (it.due_ns, it.collection.name, it.path))
    return items


def select(items: list[Item], max_bytes: int) -> list[Item]:
    """The front of the queue that fits in `max_bytes` (the first item always)."""
    chosen: list[Item] = []
    total = 0
    for it in items:
        if chosen and total + it.entry.blob_size > max_bytes:
            break
        chosen.append(it)
        total += it.entry.blob_size
    return chosen


def scrub(
    vault: Vault,
    collections: list[CollectionConfig],
    *,
    max_bytes: int | None = None,
    max_seconds: float | None = None,
    share: float | None = None,
    progress: Progress | None = None,
    now: Callable[[], int] = time.time_ns,
) -> ScrubReport:
    """One scrub run over `collections` (cold ones; the caller checked). The budget is
    `max_bytes`, else `share` percent of the collections' bytes (a snapshot's slice), else
    the nightly budget: bytes read, in every case."""
    started = time.monotonic()
    report = ScrubReport(budget_bytes=0)
    items = queue(vault, collections, report)
    if max_bytes is None:
        total = sum(it.entry.blob_size for it in items)
        max_bytes = math.ceil(total * share / 100) if share is not None else nightly_budget(items)
    report.budget_bytes = max_bytes
    chosen = select(items, max_bytes)
    report.planned_files, report.planned_bytes = len(chosen), sum(it.entry.blob_size for it in chosen)
    progress = progress or NoProgress()
    progress.reading(report.planned_files, report.planned_bytes)
    rows = _Rows(vault)
    try:
        for it in chosen:
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                report.out_of_time = True
                break
            _scrub_one(vault, it, report, rows, now)
            progress.advance(1, it.entry.blob_size)
    finally:
        rows.flush()
    report.seconds = time.monotonic() - started
    return report


def _scrub_one(vault: Vault, it: Item, report: ScrubReport, rows: _Rows, now: Callable[[], int]) -> None:
    name = it.collection.name
    full = os.fsencode(it.collection.path) + b"/" + it.path
    found = rehash(full, it.entry)
    if found.outcome in (Outcome.SAME, Outcome.ROT):
        report.read_bytes += it.entry.blob_size
    if found.outcome is Outcome.SAME:
        report.verified_files += 1
        rows.put(name, it.path, ScrubRow(now(), it.content, 0))
    elif found.outcome is Outcome.ROT:
        report.rot.append(good_copy(vault, it))
        rows.put(name, it.path, ScrubRow(it.verified_ns, it.content, now()))
    elif found.outcome is Outcome.CHANGED:
        report.changed.append((name, it.path, found.reason))
    elif found.outcome is Outcome.MISSING:
        report.missing.append((name, it.path))
    else:
        report.unreadable.append((name, it.path, found.reason))


def good_copy(vault: Vault, it: Item) -> Rot:
    """Where the version's bytes of a rotten file are, and what getting them back costs."""
    rot = Rot(it.collection.name, it.path, it.version.number, None)
    assert it.entry.blob is not None
    ref = vault.catalog.blob(it.entry.blob)
    if ref is None:
        lost = vault.catalog.lost_blob(it.entry.blob)
        rot.lost = lost_message(lost) if lost else "the vault has no copy of its bytes"
        return rot
    rot.band = ref.band
    band = vault.catalog.band(ref.band)
    if band is None:
        return rot
    rot.band_state, rot.storage_class = band.state, band.storage_class
    if not readable_now(band) and band.state != "restoring":
        prices, s3 = vault.config.prices, vault.config.s3
        plan = archive.Plan(to_restore=[band])
        rot.restore_cost_usd = round(plan.cost(prices, s3.restore_tier, s3.restore_days), 4)
        rot.restore_hours = prices.hours(s3.restore_tier)
    return rot


class _Rows:
    """Scrub rows waiting to be committed, in batches (see the module docstring)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.pending: list[tuple[str, bytes, ScrubRow]] = []
        self.since = time.monotonic()

    def put(self, collection: str, path: bytes, row: ScrubRow) -> None:
        self.pending.append((collection, path, row))
        if len(self.pending) >= BATCH_FILES or time.monotonic() - self.since >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            with self.vault.catalog.writer() as w:
                for collection, path, row in self.pending:
                    w.put_scrub(collection, path, row)
            self.pending = []
        self.since = time.monotonic()


# ---- --status -----------------------------------------------------------------------------


@dataclass(slots=True)
class CoverageStatus:
    """How much of a collection's latest version was verified within its scrub_days.
    Coverage counts files' sizes (`size`, `covered_bytes`); `data_bytes` and
    `nightly_bytes` count bytes read (sparse files: their data, not their holes)."""

    collection: str
    version: int
    scrub_days: int
    files: int
    size: int  # bytes: the files' sizes
    data_bytes: int  # what reading them all reads
    covered_files: int
    covered_bytes: int
    never_files: int  # never verified (or not since their content changed)
    oldest_ns: int  # the oldest verification among the verified files; 0: none
    nightly_bytes: int
    rot: list[tuple[bytes, int]]  # (path, found at) of files whose latest scrub found rot

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "scrub_days": self.scrub_days,
            "files": self.files,
            "bytes": self.size,
            "data_bytes": self.data_bytes,
            "verified_files": self.covered_files,
            "verified_bytes": self.covered_bytes,
            "coverage_percent": round(self.coverage, 2),
            "never_verified_files": self.never_files,
            "oldest_verified": iso_utc(self.oldest_ns) if self.oldest_ns else None,
            "nightly_budget_bytes": self.nightly_bytes,
            "rot": [{"path": to_text(p), "found": iso_utc(t)} for p, t in self.rot],
        }

    @property
    def coverage(self) -> float:
        return 100.0 * self.covered_bytes / self.size if self.size else 100.0

    def describe(self) -> list[str]:
        oldest = "never" if self.never_files or not self.oldest_ns else iso_utc(self.oldest_ns)
        never = f" ({self.never_files} file(s) never verified)" if self.never_files else ""
        data = (
            f" ({human_bytes(self.data_bytes)} of data: holes are not read)"
            if self.data_bytes != self.size
            else ""
        )
        lines = [
            f"{self.collection}@v{self.version}: {self.files} files, {human_bytes(self.size)}{data}; "
            f"verified within {self.scrub_days} days: {self.covered_files} files, "
            f"{human_bytes(self.covered_bytes)} ({self.coverage:.1f}%)",
            f"  oldest verification: {oldest}{never}",
            f"  a nightly `vaultfs scrub` reads {human_bytes(self.nightly_bytes)} of data to cover it "
            f"every {self.scrub_days} days",
            f"  bit rot found: {len(self.rot)} file(s) not repaired yet",
        ]
        lines += [f"    {display_path(p)} (found {iso_utc(t)})" for p, t in self.rot]
        return lines


def coverage(vault: Vault, collection: CollectionConfig, now: int | None = None) -> CoverageStatus | None:
    """`collection`'s coverage now; None when it has no versions."""
    latest = vault.catalog.latest_version(collection.name)
    if latest is None:
        return None
    now = time.time_ns() if now is None else now
    items = files_of(vault, collection, latest)
    window = now - collection.scrub_days * DAY_NS
    covered = [it for it in items if it.verified_ns >= window and not it.rot_ns]  # rot: not good now
    verified = [it.verified_ns for it in items if it.verified_ns]
    return CoverageStatus(
        collection=collection.name,
        version=latest.number,
        scrub_days=collection.scrub_days,
        files=len(items),
        size=sum(it.entry.size for it in items),
        data_bytes=sum(it.entry.blob_size for it in items),
        covered_files=len(covered),
        covered_bytes=sum(it.entry.size for it in covered),
        never_files=len(items) - len(verified),
        oldest_ns=min(verified, default=0),
        nightly_bytes=nightly_budget(items),
        rot=sorted((it.path, it.rot_ns) for it in items if it.rot_ns),
    )
