"""``forget``: the keep rules, the forgotten markers, and finishing interrupted forgets.

The rules and their order are in the docstring of `vaultfs.retention`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vaultfs import index
from vaultfs.errors import ConfigError
from vaultfs.retention.pins import Pin, forgettable
from vaultfs.vault import Vault


@dataclass(frozen=True, slots=True)
class ForgetResult:
    collection: str
    keep: int
    kept: tuple[int, ...]  # version numbers still listed
    forgotten: tuple[int, ...]  # forgotten by this call (or that would be, in a dry run)
    dry_run: bool = False
    pinned: tuple[Pin, ...] = ()  # older than the newest `keep`, kept because pinned

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "keep": self.keep,
            "kept": list(self.kept),
            "forgotten": list(self.forgotten),
            "pinned": [p.to_json() for p in self.pinned],
            "dry_run": self.dry_run,
        }


def forget(
    vault: Vault,
    keeps: dict[str, int],
    *,
    dry_run: bool = False,
    now: Callable[[], int] = time.time_ns,
) -> list[ForgetResult]:
    """Keep the newest ``keeps[C]`` versions of each collection C; forget the others,
    except pinned ones (`vaultfs.retention.pins`: kept, and reported in ``pinned``).

    Markers go to the store before the local catalog drops a version, so a
    crash in between leaves a marker whose version the next forget or prune
    drops (`finish_forgets`). Not ``dry_run``: the caller holds the vault lock.
    """
    for name, keep in keeps.items():
        if keep < 1:
            raise ConfigError(f"{name}: keep {keep} versions? keep at least 1")
    markers = vault.forgotten_versions()
    if not dry_run:
        finish_forgets(vault, markers)
    results = []
    for name, keep in keeps.items():
        if not dry_run:
            index.adopt_committed(vault, name)
        listed = [v for v in vault.catalog.versions(name) if (name, v.number) not in markers]
        dropped, held = forgettable(vault, name, listed, keep)
        drop = tuple(dropped)
        if not dry_run and drop:
            stamp = now()
            for number in drop:
                vault.mark_forgotten(name, number, stamp)
            with vault.catalog.writer() as w:
                for number in drop:
                    w.delete_version(name, number)
        kept = tuple(v.number for v in listed if v.number not in drop)
        results.append(ForgetResult(name, keep, kept, drop, dry_run, tuple(held)))
    return results


def finish_forgets(vault: Vault, markers: set[tuple[str, int]] | None = None) -> int:
    """Drop from the local catalog every version the store says was forgotten; how many."""
    if markers is None:
        markers = vault.forgotten_versions()
    present = [(c, n) for c, n in sorted(markers) if vault.catalog.version(c, n) is not None]
    if present:
        with vault.catalog.writer() as w:
            for c, n in present:
                w.delete_version(c, n)
    return len(present)


def keep_for(
    requested: list[str], configured: dict[str, int | None], override: int | None
) -> tuple[dict[str, int], list[str]]:
    """Which collections to forget in and how many versions each keeps.

    Returns (collection → keep, configured collections skipped for having no
    ``keep_versions``). A collection named explicitly without a policy and
    without ``override`` is a ConfigError; so is an unknown name.
    """
    if override is not None and override < 1:
        raise ConfigError(f"--keep {override}: keep at least 1 version")
    names = requested or list(configured)
    keeps: dict[str, int] = {}
    skipped: list[str] = []
    for name in names:
        if name not in configured:
            known = ", ".join(configured) or "none"
            raise ConfigError(f"no collection named {name!r} in the config (configured: {known})")
        keep = override if override is not None else configured[name]
        if keep is None:
            if requested:
                raise ConfigError(
                    f"collection {name!r} has no keep_versions: pass --keep N or set "
                    f"[collections.{name}].keep_versions"
                )
            skipped.append(name)
            continue
        keeps[name] = keep
    return keeps, skipped
