"""``compact``: rewrite the warm bands that are mostly garbage after forgets.

prune deletes a band only when nothing kept needs it; a band of a forgotten version
that still holds a few files later versions kept stays whole. compact copies the live
blobs of such bands (and the directory listings their catalogs carry that kept versions
use) into new bands and deletes the old ones. The rules (which bands qualify) and the
order of the steps, with what a crash at each one leaves, are in the docstring of
`vaultfs.retention` and in docs/retention.md; the test points are named there too. The
copying and committing are `vaultfs.retention.rewrite`'s, shared with ``recompress``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vaultfs.retention.prune import LiveSet, band_usage
from vaultfs.retention.rewrite import (
    Chosen,
    Left,
    Rewrite,
    RewriteResult,
    inspect,
    live_blobs_by_band,
    prepare,
    rewrite,
)
from vaultfs.snapshot.files import ReadProgress
from vaultfs.vault import Vault

MIN_GARBAGE = 0.5  # default share of a band's bytes no kept version needs
POLICY = Rewrite("compact", "compacted_from")


@dataclass(slots=True)
class CompactResult(RewriteResult):
    min_garbage: float = MIN_GARBAGE

    @property
    def new_bytes(self) -> int:
        """Store bytes of the new bands and sidecars (dry run: the live share of the old)."""
        if self.dry_run:
            return sum(round(c.plan.size * (1 - c.plan.garbage_fraction)) for c in self.chosen)
        return sum(b.size for b in self.new_bands) + sum(self.new_sidecars.values())

    @property
    def bytes_freed(self) -> int:
        return max(0, self.old_bytes - self.new_bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.common_json(),
            "min_garbage": self.min_garbage,
            "bands": [{**c.plan.to_json(), "kept": c.kept} for c in self.chosen],
            "bytes_before": self.old_bytes,
            "bytes_after": self.new_bytes,
            "bytes_freed": self.bytes_freed,
            "bytes_freed_estimated": self.dry_run,
        }


class _NoProgress:
    def reading(self, files_total: int, bytes_total: int) -> None:
        pass

    def advance(self, files: int, size: int) -> None:
        pass


def compact(
    vault: Vault,
    *,
    dry_run: bool = False,
    min_garbage: float = MIN_GARBAGE,
    progress: ReadProgress | None = None,
    collections: Iterable[str] = (),
) -> CompactResult:
    """Rewrite warm bands whose garbage is at least `min_garbage` of their bytes.

    ``collections`` names configured collections whose committed-but-unadopted versions
    must be adopted first (as prune does). Not ``dry_run``: the caller holds the vault lock.
    """
    result = CompactResult(dry_run, min_garbage=min_garbage)
    kept, live = prepare(vault, result, collections)
    result.chosen = _choose(vault, live, result)
    if dry_run or not result.chosen:
        return result
    rewrite(vault, kept, result, POLICY, progress or _NoProgress())
    return result


def _choose(vault: Vault, live: LiveSet, result: CompactResult) -> list[Chosen]:
    """The bands to rewrite (and those that qualify by garbage but are left, with why)."""
    usage = band_usage(vault, live, time.time_ns(), verb="compacted")
    warm = {c.name for c in vault.config.collections if c.tier == "warm"}
    by_band = live_blobs_by_band(vault, live)
    chosen = []
    for plan in sorted(usage.plans.values(), key=lambda p: p.band):
        if plan.collection not in warm or plan.band in usage.listed or not plan.dead_blobs:
            continue  # cold, or written by a kept version (all of it is that version's), or clean
        if plan.garbage_fraction < result.min_garbage:
            continue
        try:
            _, names = inspect(vault, plan, live, "compact")
        except Left as e:
            result.skipped.append((plan, e.why))
            continue
        chosen.append(Chosen(plan, by_band.get(plan.band, []), names))
    return chosen
