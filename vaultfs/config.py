"""Parse the TOML configuration into a frozen `Config`.

Only `vaultfs.cli` decides *which* file to read (``--config``, ``$VAULTFS_CONFIG``,
``~/.config/vaultfs/vault.toml``, ``/etc/vaultfs/vault.toml``); this module
turns text into validated records and names the bad key in every error.
Unknown keys are errors too: a typo such as ``keep_version`` must not be
silently ignored in a backup tool.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vaultfs.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "KIB": 1024,
    "M": 1000**2,
    "MB": 1000**2,
    "MIB": 1024**2,
    "G": 1000**3,
    "GB": 1000**3,
    "GIB": 1024**3,
    "T": 1000**4,
    "TB": 1000**4,
    "TIB": 1024**4,
    "P": 1000**5,
    "PB": 1000**5,
    "PIB": 1024**5,
}
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CLIENT_NAME_MAX = 32


def check_client_name(name: str) -> str:
    """A hub client's name (docs/hub.md), returned when valid. A client's collection ``home``
    is the hub's collection ``NAME.home``, so a client name follows the collection-name rules
    without the dot (the dot ends the prefix: ``a.b`` + ``c`` and ``a`` + ``b.c`` must not meet)
    and is at most 32 characters, leaving a client's own collection names room within the
    64 of the hub's."""
    if len(name) > CLIENT_NAME_MAX or "." in name or not _COLLECTION_NAME.match(name):
        raise ConfigError(
            f"client name {name!r}: use letters, digits, '_' and '-' only, starting with a letter "
            f"or digit, at most {CLIENT_NAME_MAX} characters (its collections become NAME.COLLECTION)"
        )
    return name


DEFAULT_NO_RESTORE_PROCESSES = (
    "tumblerd",
    "gdk-pixbuf-thumbnailer",
    "ffmpegthumbnailer",
    "totem-video-thumbnailer",
    "evince-thumbnailer",
    "baloo_file_extractor",
    "kioslave5:thumbnail.so",
    "kioworker:thumbnail.so",
    # PCManFM's in-process thumbnail thread; a generic name: any thread called "loader"
    # starts no restore (docs/mount.md, "Previews of archived files").
    "loader",
)
PREVIEW_HEAD_DEFAULT = 64 * 1024  # MIME sniffing reads the first bytes (docs/config.md)
PREVIEW_HEAD_MAX = 1024 * 1024


def parse_size(value: object, key: str) -> int:
    """``"4MiB"`` → 4194304; plain integers are bytes."""
    if isinstance(value, bool):
        raise ConfigError(f'{key} = {value!r}: expected a size such as "1GiB" or a byte count')
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key} = {value}: a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2) is not None and m.group(2).upper() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
        if m and m.group(2) is None:
            return int(float(m.group(1)))
    raise ConfigError(f'{key} = {value!r}: expected a size such as "1GiB", "4MiB" or a byte count')


AUTO: Literal["auto"] = "auto"
Level = int | Literal["auto"]  # a zstd level, or "auto": chosen per frame (docs/snapshots.md)
AUTO_MIN, AUTO_MAX = 3, 19  # the default bounds of "auto"
_LEVEL_RANGE = (-7, 22)
_RATE_FORMS = 'expected a rate such as "8MiB/s", "off", or a timetable such as "08:00,1MiB/s 23:00,off"'
_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """A bandwidth limit: one rate all day, or a timetable like rclone's ``--bwlimit``.

    ``entries`` are (second of the local day, bytes per second or None for no limit),
    sorted by time; each applies from its time until the next one, and the last one also
    before the first (the timetable wraps around midnight). ``()``: no limit at all.
    """

    entries: tuple[tuple[int, int | None], ...] = ()

    def rate_at(self, second_of_day: float) -> int | None:
        """Bytes per second at this second of the local day; None: unlimited."""
        rate = self.entries[-1][1] if self.entries else None
        for start, value in self.entries:
            if start <= second_of_day:
                rate = value
        return rate

    def __str__(self) -> str:
        if not self.entries:
            return "off"
        if len(self.entries) == 1 and self.entries[0][0] == 0:
            return rate_text(self.entries[0][1])
        return " ".join(f"{t // 3600:02d}:{t // 60 % 60:02d},{rate_text(r)}" for t, r in self.entries)


def rate_text(rate: int | None) -> str:
    """``1048576`` → ``"1MiB/s"``; None → ``"off"`` (the config's own spelling)."""
    if rate is None:
        return "off"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if rate % size == 0:
            return f"{rate // size}{unit}/s"
    return f"{rate}B/s"


def _parse_rate_value(text: str, key: str, whole: object) -> int | None:
    if text.lower() == "off":
        return None
    try:
        rate = parse_size(text.removesuffix("/s"), key)
    except ConfigError:
        raise ConfigError(f"{key} = {whole!r}: {_RATE_FORMS}") from None
    if rate <= 0:
        raise ConfigError(f'{key} = {whole!r}: a rate must be more than 0 (write "off" for no limit)')
    return rate


def parse_rate_schedule(value: object, key: str) -> RateSchedule:
    """``"8MiB/s"``, ``"off"`` or ``"08:00,1MiB/s 23:00,off"`` (times of the local day,
    increasing); ConfigError in one line for anything else."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} = {value!r}: {_RATE_FORMS}")
    items = value.split()
    if len(items) == 1 and "," not in items[0]:
        rate = _parse_rate_value(items[0], key, value)
        return RateSchedule(() if rate is None else ((0, rate),))
    entries: list[tuple[int, int | None]] = []
    for item in items:
        when, comma, rate_part = item.partition(",")
        m = _TIME_RE.match(when)
        if not comma or m is None:
            raise ConfigError(f"{key} = {value!r}: {item!r} is not HH:MM,RATE; {_RATE_FORMS}")
        start = int(m.group(1)) * 3600 + int(m.group(2)) * 60
        if entries and start <= entries[-1][0]:
            raise ConfigError(f"{key} = {value!r}: the times of a timetable must increase ({when})")
        entries.append((start, _parse_rate_value(rate_part, key, value)))
    if all(rate is None for _, rate in entries):
        return RateSchedule()
    return RateSchedule(tuple(entries))


def parse_level(value: object, key: str) -> Level:
    """A zstd level (-7 to 22) or ``"auto"``."""
    if value == AUTO:
        return AUTO
    lo, hi = _LEVEL_RANGE
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f'{key} = {value!r}: expected a zstd level ({lo} to {hi}) or "auto"')
    if not lo <= value <= hi:
        raise ConfigError(f"{key} = {value}: zstd levels run from {lo} to {hi}")
    return value


@dataclass(frozen=True, slots=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    archive_class: str = "DEEP_ARCHIVE"
    warm_class: str = "STANDARD"  # warm collections' bands (one of WARM_CLASSES)
    restore_tier: str = "Bulk"
    restore_days: int = 7
    multipart_threshold: int = 64 * 1024**2
    multipart_chunksize: int = 64 * 1024**2


# Storage classes a warm collection's bands may be uploaded in: those S3 reads without a
# restore (the archive classes, GLACIER and DEEP_ARCHIVE, need one before every read).
WARM_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR")

GIB = 1024**3  # AWS bills per "GB" of 2^30 bytes: every estimate divides by this
DAYS_PER_MONTH = 30  # AWS pro-rates storage (and early deletion) by the day against 30

# USD per GB-month of each S3 storage class (the date is `Prices.taken`).
STORAGE_PRICES: dict[str, float] = {
    "STANDARD": 0.023,
    "REDUCED_REDUNDANCY": 0.024,
    "INTELLIGENT_TIERING": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
}


@dataclass(frozen=True, slots=True)
class Prices:
    """What S3 charges: the one price table behind every estimate — restores
    (`restore plan`, `restore status`, `check --read-data`) and storage and early
    deletion (`prune`).

    Defaults: AWS list prices in us-east-1, all taken on the date in `taken` (see
    docs/config.md). Override any of them under ``[prices]``, and set ``taken`` to say
    when yours are from: every estimate prints it.
    """

    taken: str = "2025-06, AWS us-east-1 list prices"
    bulk_per_gb: float = 0.0025
    standard_per_gb: float = 0.02
    bulk_per_1000_requests: float = 0.025
    standard_per_1000_requests: float = 0.10
    # The temporary restored copy is billed as STANDARD unless set apart.
    restored_copy_per_gb_month: float = STORAGE_PRICES["STANDARD"]
    bulk_hours: int = 48
    standard_hours: int = 12
    storage_per_gb_month: dict[str, float] = field(default_factory=lambda: dict(STORAGE_PRICES))

    def storage(self, storage_class: str) -> float:
        """USD per GB-month of a class; one this table does not know is priced as the
        dearest it does (an estimate must not come out too low)."""
        known = self.storage_per_gb_month
        return known.get(storage_class, max(known.values(), default=0.0))

    def restore_cost(self, size: int, requests: int, tier: str, days: int) -> float:
        """USD for restoring ``size`` bytes in ``requests`` objects from Deep Archive with
        ``tier``, plus the restored copy's storage for ``days``."""
        gb = size / GIB
        if tier == "Bulk":
            retrieval = gb * self.bulk_per_gb + requests / 1000 * self.bulk_per_1000_requests
        else:
            retrieval = gb * self.standard_per_gb + requests / 1000 * self.standard_per_1000_requests
        return retrieval + gb * self.restored_copy_per_gb_month * days / DAYS_PER_MONTH

    def hours(self, tier: str) -> int:
        return self.bulk_hours if tier == "Bulk" else self.standard_hours


@dataclass(frozen=True, slots=True)
class RemovalLimit:
    """``max_removed``: how many of the previous version's files one snapshot may remove
    before it warns. Either a share (``"50%"``) or a number of files (``1000``).

    An unmounted volume, a failing disk or a wrong ``rm -r`` looks to a snapshot like
    files that were deleted; above this limit the snapshot says so loudly (exit 3).
    """

    percent: float | None = 50.0
    files: int | None = None

    def exceeded(self, removed: int, previous_files: int) -> bool:
        """More than the limit: a share is of the previous version's files.

        A share says nothing about a handful of files (renaming the one file of a
        collection would be "100 % removed"), so it applies from
        `SHARE_APPLIES_FROM_FILES` previous files on; a number of files always applies.
        """
        if self.files is not None:
            return removed > self.files
        assert self.percent is not None
        return previous_files >= SHARE_APPLIES_FROM_FILES and removed * 100 > self.percent * previous_files

    def __str__(self) -> str:
        if self.files is not None:
            return str(self.files)
        return f"{self.percent:g}%"


SHARE_APPLIES_FROM_FILES = 10  # see MaxRemoved.exceeded
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_percentage(value: object, key: str) -> float:
    """``"2%"`` → 2.0: a share from 0% to 100%."""
    m = _PERCENT_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(f'{key} = {value!r}: expected a percentage such as "2%"')
    percent = float(m.group(1))
    if percent > 100:
        raise ConfigError(f"{key} = {value!r}: a percentage runs from 0% to 100%")
    return percent


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str, key: str) -> float:
    """``"30m"`` → 1800.0 seconds; units s, m, h, d, w (none: seconds)."""
    m = _DURATION_RE.match(value)
    if m is None:
        raise ConfigError(f'{key} = {value!r}: expected a duration such as "30m", "2h" or "90s"')
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


def parse_removal_limit(value: object, key: str) -> RemovalLimit:
    """``"50%"`` (a share, 0 to 100) or a non-negative integer (a number of files)."""
    expected = 'expected a percentage such as "50%" or a number of files such as 1000'
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{key} = {value}: a number of files cannot be negative")
        return RemovalLimit(percent=None, files=value)
    if isinstance(value, str) and _PERCENT_RE.match(value):
        return RemovalLimit(percent=parse_percentage(value, key))
    raise ConfigError(f"{key} = {value!r}: {expected}")


# The keep rules of `vaultfs forget`, by their config key (docs/retention.md, "The keep rules").
KEEP_COUNTS = ("keep_versions", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
KEEP_RULES = ("keep_versions", "keep_within", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
_KEEP_WITHIN_RE = re.compile(r"^\s*(\d+)\s*([hdw])\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    """Which versions ``vaultfs forget`` keeps: each rule that is set keeps versions on its
    own and the union is kept (`vaultfs.retention.policy` applies them). No rule set: the
    policy is empty and forget keeps everything.
    """

    keep_versions: int | None = None  # the newest N
    keep_within: int | None = None  # seconds: every version this close to the newest one
    keep_daily: int | None = None  # the newest version of each of the last N days with versions (UTC)
    keep_weekly: int | None = None  # ... ISO weeks
    keep_monthly: int | None = None
    keep_yearly: int | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, rule) is None for rule in KEEP_RULES)

    def to_json(self) -> dict[str, int | str]:
        """The rules that are set, as the config spells them (``keep_within``: ``"7d"``)."""
        out: dict[str, int | str] = {}
        for rule in KEEP_RULES:
            value = getattr(self, rule)
            if value is not None:
                out[rule] = duration_text(value) if rule == "keep_within" else value
        return out

    def describe(self) -> str:
        """``keep_daily 7, keep_within 2d``; ``no keep rules`` when empty."""
        return ", ".join(f"{rule} {value}" for rule, value in self.to_json().items()) or "no keep rules"


def duration_text(seconds: int) -> str:
    """``604800`` → ``"1w"``: the largest unit (w, d, h, m, s) that divides it."""
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _SECONDS[unit] == 0:
            return f"{seconds // _SECONDS[unit]}{unit}"
    return f"{seconds}s"


def parse_keep_within(value: object, key: str) -> int:
    """``"7d"`` → seconds; hours, days or weeks only. Minutes are refused: ``"6m"`` may be
    meant as six months (restic reads it so), and six minutes would forget nearly everything."""
    m = _KEEP_WITHIN_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(
            f'{key} = {value!r}: expected a duration in hours, days or weeks such as "12h", "7d" '
            'or "2w" (for months write days, e.g. "180d", or use keep_monthly)'
        )
    seconds = int(m.group(1)) * _SECONDS[m.group(2).lower()]
    if seconds == 0:
        raise ConfigError(f"{key} = {value!r}: must be longer than 0 (leave it out to turn the rule off)")
    return seconds


def parse_keep_policy(values: dict[str, object], key: dict[str, str]) -> KeepPolicy:
    """The keep rules from raw values (rule → value; None: not set), for the config and the
    command line alike; ConfigError names ``key[rule]`` (``[collections.p].keep_daily``,
    ``--keep-daily``)."""
    rules: dict[str, int] = {}
    for rule, value in values.items():
        if value is None:
            continue
        if rule == "keep_within":
            rules[rule] = parse_keep_within(value, key[rule])
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key[rule]} = {value!r}: expected an integer")
        if value < 1:
            raise ConfigError(
                f"{key[rule]} = {value}: must be at least 1 (leave it out to turn the rule off)"
            )
        rules[rule] = value
    return KeepPolicy(**rules)


@dataclass(frozen=True, slots=True)
class CollectionConfig:
    name: str
    path: Path
    tier: str = "cold"
    keep_versions: int | None = None  # the keep rules (KeepPolicy): keep_versions ... keep_yearly
    frame_size: int | None = None  # None: the tier's default
    compression_level: Level | None = None  # None: [vault]'s, else the tier's
    allow_empty: bool = False  # an empty root is refused unless this says it is meant to be
    max_removed: RemovalLimit = field(default_factory=RemovalLimit)
    scrub_days: int = 30  # a nightly `vaultfs scrub` re-reads every file once in this many days
    scrub_per_snapshot: float | None = None  # percent of the bytes each snapshot scrubs; None: off
    # What a snapshot leaves out (docs/config.md, "What a collection leaves out"):
    gitignore: bool | None = None  # git's ignore rules; None: the tier's default (warm: on)
    gitignore_outside_repos: bool = False  # a .gitignore outside any git work tree applies too
    git_global_excludes: bool = False  # core.excludesFile applies inside work trees
    exclude: tuple[str, ...] = ()  # gitignore patterns, relative to the collection root
    exclude_if_present: tuple[str, ...] = ("CACHEDIR.TAG",)  # a directory holding one is left out
    exclude_larger_than: int | None = None  # warm only: files above this size are left out
    keep_within: int | None = None  # seconds
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    # Cold only: bytes of each file's head kept hot in the band's preview object (0: none).
    preview_head: int = PREVIEW_HEAD_DEFAULT

    @property
    def uses_gitignore(self) -> bool:
        return self.gitignore if self.gitignore is not None else self.tier == "warm"

    @property
    def keep_policy(self) -> KeepPolicy:
        """What ``vaultfs forget`` and the snapshot's forget keep of this collection."""
        return KeepPolicy(**{rule: getattr(self, rule) for rule in KEEP_RULES})


@dataclass(frozen=True, slots=True)
class MountSettings:
    auto_restore: bool = True
    restore_budget_per_day: int = 200 * 1024**3
    no_restore_processes: tuple[str, ...] = DEFAULT_NO_RESTORE_PROCESSES
    poll_interval: float = 900.0  # seconds between restore status checks by the mount's watcher
    fetch_restored: bool = True  # download a band into the cache as soon as its restore is ready
    cache_size: int = 50 * 1024**3  # bound of <state_dir>/cache (whole bands)
    on_restore_ready: str = ""  # a command run (with the band id as argument) when a restore is ready
    on_restore_requested: str = ""  # a command run (band id as argument) when an open requests one


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """``[clients.NAME]`` of a hub (docs/hub.md): the keep rules of every collection the
    client machine NAME sends (``NAME.home``, ...), applied on the hub after each of its
    snapshots and by ``vaultfs forget``: a client cannot forget versions itself."""

    name: str
    keep: KeepPolicy = field(default_factory=lambda: KeepPolicy())


@dataclass(frozen=True, slots=True)
class HubSettings:
    """``[hub]``: this machine backs up to a vaultfs hub over SSH (docs/hub.md) instead of
    to a store of its own. `url` is ``ssh://[user@]host[:port]``; `ssh_command` is the
    command that runs ssh (split like a shell command line; BORG_RSH's role)."""

    url: str
    ssh_command: str = "ssh"

    def ssh_argv(self) -> list[str]:
        """The command line that reaches the hub: ssh, its options, the port, the host and
        the remote command (which the hub's authorized_keys entry replaces with its own)."""
        rest = self.url[len("ssh://") :].rstrip("/")
        host, _, port = rest.rpartition(":") if _HUB_PORT.search(rest) else (rest, "", "")
        return [
            *shlex.split(self.ssh_command),
            *(["-p", port] if port else []),
            host,
            "vaultfs serve --stdio",
        ]


_HUB_URL = re.compile(r"^ssh://([A-Za-z0-9._%+-]+@)?[A-Za-z0-9._-]+(:\d{1,5})?/?$")
_HUB_PORT = re.compile(r":\d{1,5}/?$")


@dataclass(frozen=True, slots=True)
class Config:
    store: str  # "" when the config names a hub instead (`hub`)
    state_dir: Path
    band_size: int = 1024**3
    compression_level: Level | None = None  # None: the tier's default (`snapshot.files.band_settings`)
    threads: int = 2
    auto_min: int = AUTO_MIN  # the bounds of compression_level = "auto"
    auto_max: int = AUTO_MAX
    upload_limit: RateSchedule = field(default_factory=RateSchedule)  # every store, every command
    download_limit: RateSchedule = field(default_factory=RateSchedule)
    s3: S3Settings = field(default_factory=S3Settings)
    collections: tuple[CollectionConfig, ...] = ()
    mount: MountSettings = field(default_factory=MountSettings)
    prices: Prices = field(default_factory=Prices)
    source: Path | None = None  # the file it was read from, for messages
    hub: HubSettings | None = None  # a hub's client: snapshots go to the hub (docs/hub.md)
    clients: tuple[ClientSettings, ...] = ()  # a hub: its client machines' settings

    def client_keep(self, collection: str) -> KeepPolicy:
        """The keep rules of a hub client's collection (``laptop.home``: ``[clients.laptop]``);
        empty when the hub's config says none."""
        name = collection.split(".", 1)[0]
        return next((c.keep for c in self.clients if c.name == name), KeepPolicy())

    # git's own default for core.excludesFile ($XDG_CONFIG_HOME/git/ignore, else
    # $HOME/.config/git/ignore): not in the file, but the environment, which only
    # `vaultfs.cli.main` reads (`git_excludes_default`); None: no default applies.
    git_excludes_default: Path | None = None

    def collection(self, name: str) -> CollectionConfig:
        for c in self.collections:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.collections) or "none"
        raise ConfigError(f"no collection named {name!r} in the config (configured: {known})")


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/vaultfs")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vaultfs"


class _Table:
    """One TOML table being read: hands out keys, then complains about the rest."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = dict(data)
        self.where = where

    def key(self, name: str) -> str:
        """How messages spell a key: ``[vault].store``, ``[collections.photos].path``; a
        table itself: ``[vault]`` (docs/config.md uses the same spelling)."""
        return f"[{self.where}].{name}" if self.where else f"[{name}]"

    def take(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if name not in self.data:
            return default
        value = self.data.pop(name)
        if isinstance(value, bool) and kind is not bool and kind != (bool,):
            raise ConfigError(f"{self.key(name)} = {value!r}: expected {_kind_name(kind)}")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.key(name)} = {value!r}: expected {_kind_name(kind)}")
        return value

    def require(self, name: str, kind: type) -> Any:
        if name not in self.data:
            raise ConfigError(f"{self.key(name)} is missing: it is required")
        return self.take(name, kind)

    def take_size(self, name: str, default: int) -> int:
        if name not in self.data:
            return default
        return parse_size(self.data.pop(name), self.key(name))

    def take_removal_limit(self, name: str) -> RemovalLimit:
        if name not in self.data:
            return RemovalLimit()
        return parse_removal_limit(self.data.pop(name), self.key(name))

    def finish(self) -> None:
        for name in self.data:
            raise ConfigError(f"unknown key {self.key(name)!s}: check its spelling (see docs/config.md)")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_config(path: Path) -> Config:
    """Read and validate a config file; ConfigError names the file and key on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found: create it (see docs/config.md) or pass --config FILE"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    return parse_config(text, source=path)


def parse_config(text: str, source: Path | None = None) -> Config:
    where = f"{source}: " if source else ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}not valid TOML: {e}") from None
    try:
        return _build(data, source)
    except ConfigError as e:
        raise ConfigError(f"{where}{e.message}") from None


def _build(data: dict[str, Any], source: Path | None) -> Config:
    top = _Table(data, "")
    hub = _hub_settings(_Table(top.take("hub", dict), "hub")) if "hub" in top.data else None
    vault = _Table(top.require("vault", dict) if hub is None else top.take("vault", dict, {}), "vault")
    s3 = _Table(top.take("s3", dict, {}), "s3")
    mount = _Table(top.take("mount", dict, {}), "mount")
    prices = _Table(top.take("prices", dict, {}), "prices")
    collections_raw: dict[str, Any] = top.take("collections", dict, {})
    clients_raw: dict[str, Any] = top.take("clients", dict, {})
    top.finish()
    if hub is not None and "store" in vault.data:
        raise ConfigError(
            "[vault].store and [hub] are both set: a machine backs up either to its own store "
            "or to a hub; remove one of them"
        )
    if hub is not None:
        vault.data["store"] = ""
    return Config(
        **_vault_settings(vault, hub is None),
        s3=_s3_settings(s3),
        collections=tuple(_collection(name, raw) for name, raw in collections_raw.items()),
        mount=_mount_settings(mount),
        prices=_prices(prices),
        source=source,
        hub=hub,
        clients=tuple(_client(name, raw) for name, raw in clients_raw.items()),
    )


def _hub_settings(t: _Table) -> HubSettings:
    """``[hub]``: url, ssh_command."""
    url = t.require("url", str)
    if not _HUB_URL.match(url):
        raise ConfigError(
            f'{t.key("url")} = {url!r}: expected "ssh://[user@]host[:port]", e.g. "ssh://root@nas"'
        )
    ssh_command = t.take("ssh_command", str, "ssh")
    try:
        words = shlex.split(ssh_command)
    except ValueError as e:
        raise ConfigError(
            f"{t.key('ssh_command')} = {ssh_command!r}: {e}; it is split like a shell command line"
        ) from None
    if not words:
        raise ConfigError(f"{t.key('ssh_command')}: empty; leave it out to run ssh")
    t.finish()
    return HubSettings(url, ssh_command)


def _vault_settings(t: _Table, own_store: bool = True) -> dict[str, Any]:
    """``[vault]``: store, state_dir, band_size, compression levels, threads, limits (a hub's
    client has no store of its own: `own_store` False)."""
    store = t.require("store", str)
    if own_store and not (store.startswith("s3://") or store.startswith("file://")):
        raise ConfigError(
            f'{t.key("store")} = {store!r}: expected "s3://bucket/prefix" or "file:///absolute/path"'
        )
    if store.startswith("s3://") and not store[5:].split("/", 1)[0]:
        raise ConfigError(f"{t.key('store')} = {store!r}: the bucket name is missing")
    if store.startswith("file://") and not store[7:].startswith("/"):
        raise ConfigError(f"{t.key('store')} = {store!r}: a file:// store needs an absolute path")
    state_dir_raw = t.take("state_dir", str)
    state_dir = Path(state_dir_raw).expanduser() if state_dir_raw else default_state_dir()
    band_size = t.take_size("band_size", 1024**3)
    if band_size < 64 * 1024:
        raise ConfigError(f"{t.key('band_size')} = {band_size}: must be at least 64KiB")
    threads = t.take("threads", int, max(1, min(4, os.cpu_count() or 1)))
    if threads < 1:
        raise ConfigError(f"{t.key('threads')} = {threads}: must be at least 1")
    settings: dict[str, Any] = {
        "store": store,
        "state_dir": state_dir,
        "band_size": band_size,
        "threads": threads,
        **_level_settings(t),
    }
    for name in ("upload_limit", "download_limit"):
        if name in t.data:
            settings[name] = parse_rate_schedule(t.data.pop(name), t.key(name))
    t.finish()
    return settings


def _level_settings(t: _Table) -> dict[str, Any]:
    """``compression_level`` (a level or "auto"), ``auto_min`` and ``auto_max``."""
    level = (
        None
        if "compression_level" not in t.data
        else parse_level(t.data.pop("compression_level"), t.key("compression_level"))
    )
    bounds = {
        name: t.take(name, int, default) for name, default in (("auto_min", AUTO_MIN), ("auto_max", AUTO_MAX))
    }
    for name, value in bounds.items():
        if not 1 <= value <= _LEVEL_RANGE[1]:
            raise ConfigError(
                f'{t.key(name)} = {value}: the bounds of "auto" run from 1 to {_LEVEL_RANGE[1]}'
            )
    if bounds["auto_min"] > bounds["auto_max"]:
        raise ConfigError(
            f"{t.key('auto_min')} = {bounds['auto_min']}: must not be above auto_max ({bounds['auto_max']})"
        )
    return {"compression_level": level, **bounds}


def _s3_settings(t: _Table) -> S3Settings:
    settings = S3Settings(
        endpoint_url=t.take("endpoint_url", str),
        region=t.take("region", str),
        profile=t.take("profile", str),
        archive_class=t.take("archive_class", str, "DEEP_ARCHIVE"),
        warm_class=t.take("warm_class", str, "STANDARD"),
        restore_tier=t.take("restore_tier", str, "Bulk"),
        restore_days=t.take("restore_days", int, 7),
        multipart_threshold=t.take_size("multipart_threshold", 64 * 1024**2),
        multipart_chunksize=t.take_size("multipart_chunksize", 64 * 1024**2),
    )
    if settings.restore_tier not in ("Bulk", "Standard"):
        raise ConfigError(
            f'{t.key("restore_tier")} = {settings.restore_tier!r}: expected "Bulk" or "Standard"'
        )
    if settings.warm_class not in WARM_CLASSES:
        raise ConfigError(
            f"{t.key('warm_class')} = {settings.warm_class!r}: warm bands must be readable without "
            f"a restore: use one of {', '.join(WARM_CLASSES)}"
        )
    if settings.multipart_chunksize < 5 * 1024**2:
        raise ConfigError(f"{t.key('multipart_chunksize')}: S3 needs parts of at least 5MiB")
    t.finish()
    return settings


def _client(name: str, raw: Any) -> ClientSettings:
    """``[clients.NAME]``: the keep rules of a hub client's collections."""
    try:
        check_client_name(name)
    except ConfigError as e:
        raise ConfigError(f"[clients.{name}]: {e.message}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"[clients.{name}]: expected a table, not a value")
    t = _Table(raw, f"clients.{name}")
    keep = parse_keep_policy({r: t.data.pop(r, None) for r in KEEP_RULES}, {r: t.key(r) for r in KEEP_RULES})
    t.finish()
    return ClientSettings(name, keep)


def _collection(name: str, raw: Any) -> CollectionConfig:
    """``[collections.NAME]``."""
    if not _COLLECTION_NAME.match(name):
        raise ConfigError(
            f"[collections.{name}]: a collection name uses letters, digits, '.', '_' and '-' only"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"[collections.{name}]: expected a table, not a value")
    t = _Table(raw, f"collections.{name}")
    path = Path(t.require("path", str)).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"{t.key('path')} = {str(path)!r}: must be an absolute path")
    tier = t.take("tier", str, "cold")
    if tier not in ("cold", "warm"):
        raise ConfigError(f'{t.key("tier")} = {tier!r}: expected "cold" or "warm"')
    keep = parse_keep_policy({r: t.data.pop(r, None) for r in KEEP_RULES}, {r: t.key(r) for r in KEEP_RULES})
    frame = t.take_size("frame_size", 0) or None
    if frame is not None and not 64 * 1024 <= frame <= 1024**3:
        raise ConfigError(f"{t.key('frame_size')}: must be between 64KiB and 1GiB")
    clevel = (
        None
        if "compression_level" not in t.data
        else parse_level(t.data.pop("compression_level"), t.key("compression_level"))
    )
    allow_empty = t.take("allow_empty", bool, False)
    max_removed = t.take_removal_limit("max_removed")
    scrub_days, share = _scrub_keys(t, tier)
    rules = _exclusion_rules(t, tier)
    preview_head = _preview_head(t, tier)
    t.finish()
    return CollectionConfig(
        name,
        path,
        tier,
        keep.keep_versions,
        frame,
        clevel,
        allow_empty,
        max_removed,
        scrub_days,
        share,
        **rules,
        **{r: getattr(keep, r) for r in KEEP_RULES if r != "keep_versions"},
        preview_head=preview_head,
    )


def _preview_head(t: _Table, tier: str) -> int:
    """``preview_head`` of a collection: cold only (warm bands are never archived)."""
    if "preview_head" in t.data and tier != "cold":
        raise ConfigError(
            f"{t.key('preview_head')}: only for cold collections (a warm collection is never "
            'archived); remove it or set tier = "cold"'
        )
    head = t.take_size("preview_head", PREVIEW_HEAD_DEFAULT if tier == "cold" else 0)
    if head > PREVIEW_HEAD_MAX:
        raise ConfigError(f"{t.key('preview_head')} = {head}: at most 1MiB (0 keeps no previews)")
    return head


def _scrub_keys(t: _Table, tier: str) -> tuple[int, float | None]:
    """``scrub_days`` and ``scrub_per_snapshot`` (None: off) of a collection. Scrubbing is
    for cold collections: on a warm one these would be settings that never apply."""
    given = [k for k in ("scrub_days", "scrub_per_snapshot") if k in t.data]
    scrub_days = t.take("scrub_days", int, 30)
    if scrub_days < 1:
        raise ConfigError(f"{t.key('scrub_days')} = {scrub_days}: must be at least 1 (days)")
    per_snapshot = t.take("scrub_per_snapshot", object)
    share = None if per_snapshot is None else parse_percentage(per_snapshot, t.key("scrub_per_snapshot"))
    for key in given:
        if tier != "cold" and (key == "scrub_days" or share):
            raise ConfigError(
                f"{t.key(key)}: only for cold collections (a warm collection's files are "
                're-read by its snapshots); remove it or set tier = "cold"'
            )
    return scrub_days, share or None


def _exclusion_rules(t: _Table, tier: str) -> dict[str, Any]:
    """``gitignore``, ``gitignore_outside_repos``, ``git_global_excludes``, ``exclude``,
    ``exclude_if_present``, ``exclude_larger_than`` of a collection."""
    rules: dict[str, Any] = {
        "gitignore": t.take("gitignore", bool),
        "gitignore_outside_repos": t.take("gitignore_outside_repos", bool, False),
        "git_global_excludes": t.take("git_global_excludes", bool, False),
        "exclude": _strings(t, "exclude", [], 'gitignore patterns such as "*.tmp"'),
        "exclude_if_present": _strings(t, "exclude_if_present", ["CACHEDIR.TAG"], "file names"),
    }
    for name in rules["exclude_if_present"]:
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(f"{t.key('exclude_if_present')}: {name!r} is not a file name")
    if "exclude_larger_than" in t.data:
        limit = t.take_size("exclude_larger_than", 0)
        if tier != "warm":
            raise ConfigError(
                f"{t.key('exclude_larger_than')}: only for warm collections (a cold collection "
                'keeps every file); remove it or set tier = "warm"'
            )
        rules["exclude_larger_than"] = limit
    return rules


def _strings(t: _Table, name: str, default: list[str], what: str) -> tuple[str, ...]:
    values = t.take(name, list, default)
    if not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{t.key(name)} = {values!r}: expected a list of {what}")
    return tuple(values)


def _mount_settings(t: _Table) -> MountSettings:
    settings = MountSettings(
        auto_restore=t.take("auto_restore", bool, True),
        restore_budget_per_day=t.take_size("restore_budget_per_day", 200 * 1024**3),
        no_restore_processes=tuple(t.take("no_restore_processes", list, list(DEFAULT_NO_RESTORE_PROCESSES))),
        poll_interval=float(t.take("poll_interval", (int, float), 900.0)),
        fetch_restored=t.take("fetch_restored", bool, True),
        cache_size=t.take_size("cache_size", 50 * 1024**3),
        on_restore_ready=t.take("on_restore_ready", str, ""),
        on_restore_requested=t.take("on_restore_requested", str, ""),
    )
    if settings.poll_interval <= 0:
        raise ConfigError(f"{t.key('poll_interval')} = {settings.poll_interval}: must be positive")
    for hook in ("on_restore_ready", "on_restore_requested"):
        try:
            shlex.split(getattr(settings, hook))
        except ValueError as e:  # e.g. an unclosed quote: say so now, not when a restore is ready
            raise ConfigError(
                f"{t.key(hook)} = {getattr(settings, hook)!r}: {e}; it is split like a shell command line"
            ) from None
    if not all(isinstance(p, str) and p for p in settings.no_restore_processes):
        raise ConfigError(f"{t.key('no_restore_processes')}: expected a list of process names")
    t.finish()
    return settings


def _prices(t: _Table) -> Prices:
    defaults = Prices()
    values: dict[str, Any] = {"taken": t.take("taken", str, defaults.taken)}
    storage = dict(defaults.storage_per_gb_month)
    table = _Table(t.take("storage_per_gb_month", dict, {}), "prices.storage_per_gb_month")
    for name in list(table.data):
        storage[name] = _price(table, name, 0.0)
    values["storage_per_gb_month"] = storage
    values["restored_copy_per_gb_month"] = storage["STANDARD"]
    for name in (
        "bulk_per_gb",
        "standard_per_gb",
        "bulk_per_1000_requests",
        "standard_per_1000_requests",
        "restored_copy_per_gb_month",
    ):
        values[name] = _price(t, name, values.get(name, getattr(defaults, name)))
    for name in ("bulk_hours", "standard_hours"):
        values[name] = t.take(name, int, getattr(defaults, name))
        if values[name] < 1:
            raise ConfigError(f"{t.key(name)} = {values[name]}: expected a number of hours, at least 1")
    t.finish()
    return Prices(**values)


def _price(t: _Table, name: str, default: float) -> float:
    value = t.take(name, (int, float), default)
    if value < 0:
        raise ConfigError(f"{t.key(name)} = {value}: a price cannot be negative")
    if not math.isfinite(value):  # TOML's nan and inf: every estimate would say $nan
        raise ConfigError(f"{t.key(name)} = {value}: expected a price in dollars, 0 or more")
    return float(value)
