"""The keep rules: which versions of a collection each rule keeps, and why.

Plain arithmetic on the versions' numbers and creation times (no I/O), so ``forget``,
its dry run and the snapshot's forget all decide the same way. The semantics are
restic's ``forget --keep-*`` (docs/retention.md, "The keep rules"):

* every rule that is set keeps versions on its own; the union is kept;
* ``keep_versions N``: the newest N versions (by number, as before the other rules);
* ``keep_daily N`` (``weekly``, ``monthly``, ``yearly``): walking the versions newest
  first, the newest version of each of the last N days (ISO weeks, months, years) that
  have versions — periods without a version do not count;
* ``keep_within D``: every version created at most D before the newest version — not
  before now, so a vault whose snapshots stopped keeps its last ones. A version dated in
  the future (a clock that was wrong) is not "the newest": the reference is the newest
  creation time not after now (now itself if every version is in the future);
* periods are UTC calendar days, the times `vaultfs versions` prints: the answer does
  not depend on the time zone of whatever runs forget (a shell, cron, a systemd timer);
* the latest version (the highest number) is always kept, whatever the rules say.

Newest first means by creation time, then by number (restic's order); with a clock
that never went backwards that is the order of the numbers. Pins (`pins`) are added
by ``forget`` on top of what this module keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vaultfs.config import KeepPolicy, duration_text
from vaultfs.model import VersionInfo

NS_PER_SECOND = 10**9


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a version is kept: the rule (a config key, ``latest`` or ``pinned``) and the
    period it stands for (``2024-03-04``, ``2024-W10``, ``2024-03``, ``2024``), if any."""

    rule: str
    period: str = ""

    def __str__(self) -> str:
        return f"{self.rule} ({self.period})" if self.period else self.rule

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "period": self.period or None}


def _day(t: time.struct_time) -> str:
    return time.strftime("%Y-%m-%d", t)


def _week(t: time.struct_time) -> str:
    return time.strftime("%G-W%V", t)  # ISO 8601: weeks start on Monday; 2024-12-30 is 2025-W01


def _month(t: time.struct_time) -> str:
    return time.strftime("%Y-%m", t)


def _year(t: time.struct_time) -> str:
    return time.strftime("%Y", t)


PERIODS: dict[str, Callable[[time.struct_time], str]] = {
    "keep_daily": _day,
    "keep_weekly": _week,
    "keep_monthly": _month,
    "keep_yearly": _year,
}


def kept_by_rules(policy: KeepPolicy, versions: list[VersionInfo], now_ns: int) -> dict[int, list[Reason]]:
    """Version number → the reasons it is kept, for every version some rule (or being the
    latest) keeps; the versions not in the result are the ones the rules let go.
    An empty policy keeps every version (``forget`` never gets here with one)."""
    if policy.empty:
        return {v.number: [Reason("no keep rules")] for v in versions}
    by_number = sorted(versions, key=lambda v: v.number)
    newest_first = sorted(versions, key=lambda v: (v.created_ns, v.number), reverse=True)
    reasons: dict[int, list[Reason]] = {}
    for v in by_number[-1:]:
        reasons[v.number] = [Reason("latest")]
    if policy.keep_versions is not None:
        for v in by_number[-policy.keep_versions :]:
            reasons.setdefault(v.number, []).append(Reason("keep_versions"))
    if policy.keep_within is not None:
        past = [v.created_ns for v in versions if v.created_ns <= now_ns]
        since = (max(past) if past else now_ns) - policy.keep_within * NS_PER_SECOND
        within = Reason("keep_within", duration_text(policy.keep_within))
        for v in newest_first:
            if v.created_ns >= since:
                reasons.setdefault(v.number, []).append(within)
    for rule, period_of in PERIODS.items():
        count: int | None = getattr(policy, rule)
        if count is not None:
            for number, period in _newest_per_period(newest_first, period_of, count):
                reasons.setdefault(number, []).append(Reason(rule, period))
    return {n: reasons[n] for n in sorted(reasons)}


def _newest_per_period(
    newest_first: list[VersionInfo], period_of: Callable[[time.struct_time], str], count: int
) -> list[tuple[int, str]]:
    """(number, period) of the newest version of each of the `count` newest periods."""
    out: list[tuple[int, str]] = []
    last = None
    for v in newest_first:
        if len(out) == count:
            break
        period = period_of(time.gmtime(v.created_ns // NS_PER_SECOND))
        if period != last:
            out.append((v.number, period))
            last = period
    return out
