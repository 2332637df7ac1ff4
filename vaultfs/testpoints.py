"""The one test hook: named points where a test can stop, kill or fail the process.

Crash safety, "file changed while read", flaky stores and handler bugs cannot be
tested by timing or by mocking our own code; they need the real process to stop or
fail at an exact place. Production code calls ``reach("band-uploaded")`` at such
places; nothing happens unless the command line was given ``VAULTFS_TESTPOINTS``
(read by `vaultfs.cli` only, once, before any command runs), e.g.

    VAULTFS_TESTPOINTS="band-uploaded#2=kill,after-scan=stop,read:a.txt=fail,store-faults=0.3:7"

* ``NAME=kill`` sends SIGKILL to this process the first time NAME is reached
  (``NAME#N=kill``: the N-th time);
* ``NAME=stop`` sends SIGSTOP, so the test can change the world and resume the
  process with SIGCONT;
* ``NAME=fail`` raises `InjectedFault` there — an unexpected exception, as a bug
  would raise. The mount checks ``read:<file name>`` when a file is opened
  (`fails`), so every read of that file fails and the test sees that it becomes EIO,
  is logged, and that the mount goes on serving;
* ``store-faults=RATE:SEED``: every store opened afterwards fails about RATE of its
  calls with transient errors (`vaultfs.store.faults`), under a retry wrapper with
  more attempts and millisecond backoff (`store_faults`);
* ``snapshot-clock=2024-03-04T12:00:00Z`` (UTC): the snapshots this process runs read
  this instant instead of the system clock (`snapshot_clock`), so their versions are
  created then. A test builds a history of versions at chosen times this way, one
  ``vaultfs snapshot`` per instant, for the keep rules of ``forget``
  (`vaultfs.retention.policy`), which go by the versions' creation times. Only the
  snapshot's clock: band ages, markers and prune still read the real one;
* ``mount-clock=PATH``: the mount's log of refused opens (one line per process and
  band per minute, `vaultfs.mount.askers.RefusalLog`) reads the time from the file
  PATH (``YYYY-MM-DDTHH:MM:SSZ``, read at every call: `mount_clock`), so a test moves
  that clock on by rewriting the file instead of sleeping for a minute;
* ``limit-clock=2024-03-04T07:59:58Z`` (UTC): the bandwidth limiter's timetable
  (`vaultfs.store.limit`) reads a clock that starts at this instant when the hook is
  read and then runs as real time does (`limit_clock`), so a test sees the timetable
  switch during a real transfer.

Never set it outside tests. The state is per process and survives the mount's fork.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

ACTIONS = ("kill", "stop", "fail")
STORE_FAULTS = "store-faults"
SNAPSHOT_CLOCK = "snapshot-clock"
MOUNT_CLOCK = "mount-clock"
LIMIT_CLOCK = "limit-clock"

_actions: dict[str, str] = {}
_seen: Counter[str] = Counter()
_store_faults: tuple[float, int] | None = None
_snapshot_clock: int | None = None  # ns since the epoch
_mount_clock: str | None = None  # a file holding the time
_limit_clock: tuple[float, float] | None = None  # (instant, time.monotonic() when read)


class InjectedFault(RuntimeError):
    """Raised at a point armed with ``=fail``: stands for a bug, so it is never a VaultError."""


def configure(spec: str) -> None:
    """Parse ``NAME[#N]=ACTION,...``, ``store-faults=RATE:SEED`` and ``snapshot-clock=TIME``;
    ValueError (with the variable's name) for anything else, so a mistyped hook never
    silently tests nothing."""
    global _store_faults, _snapshot_clock, _mount_clock, _limit_clock
    _actions.clear()
    _seen.clear()
    _store_faults = None
    _snapshot_clock = None
    _mount_clock = None
    _limit_clock = None
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        if name == STORE_FAULTS:
            _store_faults = _parse_faults(action, item)
        elif name == SNAPSHOT_CLOCK:
            _snapshot_clock = _parse_clock(action, item)
        elif name == MOUNT_CLOCK and action:
            _mount_clock = action
        elif name == LIMIT_CLOCK:
            _limit_clock = (_parse_clock(action, item) / 1e9, time.monotonic())
        elif action in ACTIONS and name:
            _actions[name] = action
        else:
            raise ValueError(
                f"VAULTFS_TESTPOINTS: {item!r} is not NAME=kill|stop|fail, {STORE_FAULTS}=RATE:SEED, "
                f"{SNAPSHOT_CLOCK}=YYYY-MM-DDTHH:MM:SSZ, {LIMIT_CLOCK}=YYYY-MM-DDTHH:MM:SSZ "
                f"or {MOUNT_CLOCK}=PATH"
            )


def _parse_faults(value: str, item: str) -> tuple[float, int]:
    rate, _, seed = value.partition(":")
    try:
        parsed = (float(rate), int(seed or "0"))
    except ValueError:
        raise ValueError(
            f"VAULTFS_TESTPOINTS: {item!r}: expected {STORE_FAULTS}=RATE:SEED, e.g. 0.3:7"
        ) from None
    if not 0 <= parsed[0] <= 1:
        raise ValueError(f"VAULTFS_TESTPOINTS: {item!r}: RATE runs from 0 to 1")
    return parsed


def _parse_clock(value: str, item: str) -> int:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        when = None
    if when is None or when.utcoffset() is None or when.utcoffset():
        raise ValueError(
            f"VAULTFS_TESTPOINTS: {item!r}: expected {item.partition('=')[0]}=YYYY-MM-DDTHH:MM:SSZ (UTC)"
        )
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000


def reach(name: str) -> None:
    """Do what the test asked for at point `name` (usually nothing)."""
    if not _actions:
        return
    _seen[name] += 1
    n = _seen[name]
    action = _actions.get(f"{name}#{n}") or (_actions.get(name) if n == 1 else None)
    import signal  # here: tests only, and the module is ~1 ms of every command's start-up

    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "fail":
        raise InjectedFault(f"injected fault at {name} (VAULTFS_TESTPOINTS)")


def fails(name: str) -> bool:
    """Whether point `name` is armed with ``=fail`` (for a check made once, e.g. at open,
    whose failure happens later, at every read)."""
    return bool(_actions) and _actions.get(name) == "fail"


def store_faults() -> tuple[float, int] | None:
    """(rate, seed) of ``store-faults``, or None."""
    return _store_faults


def snapshot_clock() -> Callable[[], int]:
    """The clock a snapshot reads (ns since the epoch): the system's, or the instant of
    ``snapshot-clock``."""
    fixed = _snapshot_clock
    return time.time_ns if fixed is None else lambda: fixed


def mount_clock() -> Callable[[], int]:
    """The clock of the mount's refusal log (ns since the epoch): the system's, or the
    instant written in the file of ``mount-clock`` (read at every call)."""
    path = _mount_clock
    if path is None:
        return time.time_ns

    def read() -> int:
        with open(path) as f:
            return _parse_clock(f.read().strip(), f"{MOUNT_CLOCK}={path}")

    return read


def limit_clock() -> Callable[[], float]:
    """The wall clock the bandwidth timetable reads (seconds since the epoch): the
    system's, or one that started at the instant of ``limit-clock`` and runs from there."""
    start = _limit_clock
    if start is None:
        return time.time
    instant, since = start
    return lambda: instant + (time.monotonic() - since)
