"""Named points in long operations where a test can stop or kill the process.

Crash safety and "file changed while read" cannot be tested by timing; they
need the process to stop at an exact place. Production code calls
``reach("band-uploaded")`` at such places; it does nothing unless the command
line was given ``VAULTFS_TESTPOINTS`` (read by vaultfs.cli only), e.g.

    VAULTFS_TESTPOINTS="band-uploaded#2=kill,after-scan=stop"

``NAME=kill`` sends SIGKILL to this process the first time NAME is reached
(``NAME#N=kill``: the N-th time); ``NAME=stop`` sends SIGSTOP, so the test
can change the world and resume the process with SIGCONT.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_actions: dict[str, str] = {}
_seen: Counter[str] = Counter()


def configure(spec: str) -> None:
    """Parse ``NAME[#N]=ACTION,...``; unknown actions are rejected loudly."""
    _actions.clear()
    _seen.clear()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        if action not in ("kill", "stop"):
            raise ValueError(f"VAULTFS_TESTPOINTS: unknown action in {item!r}")
        _actions[name] = action


def reach(name: str) -> None:
    if not _actions:
        return
    _seen[name] += 1
    n = _seen[name]
    action = _actions.get(f"{name}#{n}") or (_actions.get(name) if n == 1 else None)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
