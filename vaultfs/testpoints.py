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
  more attempts and millisecond backoff (`store_faults`).

Never set it outside tests. The state is per process and survives the mount's fork.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ACTIONS = ("kill", "stop", "fail")
STORE_FAULTS = "store-faults"

_actions: dict[str, str] = {}
_seen: Counter[str] = Counter()
_store_faults: tuple[float, int] | None = None


class InjectedFault(RuntimeError):
    """Raised at a point armed with ``=fail``: stands for a bug, so it is never a VaultError."""


def configure(spec: str) -> None:
    """Parse ``NAME[#N]=ACTION,...`` and ``store-faults=RATE:SEED``; ValueError (with the
    variable's name) for anything else, so a mistyped hook never silently tests nothing."""
    global _store_faults
    _actions.clear()
    _seen.clear()
    _store_faults = None
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        if name == STORE_FAULTS:
            _store_faults = _parse_faults(action, item)
        elif action in ACTIONS and name:
            _actions[name] = action
        else:
            raise ValueError(
                f"VAULTFS_TESTPOINTS: {item!r} is not NAME=kill|stop|fail or {STORE_FAULTS}=RATE:SEED"
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


def reach(name: str) -> None:
    """Do what the test asked for at point `name` (usually nothing)."""
    if not _actions:
        return
    _seen[name] += 1
    n = _seen[name]
    action = _actions.get(f"{name}#{n}") or (_actions.get(name) if n == 1 else None)
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
