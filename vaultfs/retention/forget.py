"""``forget``: the keep rules, the forgotten markers, and finishing interrupted forgets.

The rules and their order are in the docstring of `vaultfs.retention`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vaultfs import index
from vaultfs.config import KeepPolicy
from vaultfs.errors import ConfigError
from vaultfs.output import iso_utc
from vaultfs.retention.pins import Pin, forgettable
from vaultfs.retention.policy import Reason, kept_by_rules
from vaultfs.vault import Vault


@dataclass(frozen=True, slots=True)
class ForgetResult:
    collection: str
    policy: KeepPolicy
    kept: tuple[int, ...]  # version numbers still listed
    forgotten: tuple[int, ...]  # forgotten by this call (or that would be, in a dry run)
    dry_run: bool = False
    pinned: tuple[Pin, ...] = ()  # not kept by the rules, kept because pinned
    reasons: dict[int, tuple[Reason, ...]] = field(default_factory=dict)  # kept version → why
    created_ns: dict[int, int] = field(default_factory=dict)  # every version considered

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "policy": self.policy.to_json(),
            "kept": list(self.kept),
            "forgotten": list(self.forgotten),
            "pinned": [p.to_json() for p in self.pinned],
            "versions": [
                {
                    "version": n,
                    "created": iso_utc(created),
                    "kept": n not in self.forgotten,
                    "reasons": [r.to_json() for r in self.reasons.get(n, ())],
                }
                for n, created in sorted(self.created_ns.items())
            ],
            "dry_run": self.dry_run,
        }


def forget(
    vault: Vault,
    policies: dict[str, KeepPolicy],
    *,
    dry_run: bool = False,
    now: Callable[[], int] = time.time_ns,
) -> list[ForgetResult]:
    """Keep the versions of each collection C that the rules ``policies[C]`` keep
    (`vaultfs.retention.policy`) and the pinned ones (`vaultfs.retention.pins`: reported in
    ``pinned``); forget the others. Each kept version's reasons are in the result.

    Markers go to the store before the local catalog drops a version, so a
    crash in between leaves a marker whose version the next forget or prune
    drops (`finish_forgets`). Not ``dry_run``: the caller holds the vault lock.
    """
    for name, policy in policies.items():
        if policy.empty:
            raise ConfigError(f"{name}: no keep rules: forget would keep every version")
    markers = vault.forgotten_versions()
    if not dry_run:
        finish_forgets(vault, markers)
    now_ns = now()
    results = []
    for name, policy in policies.items():
        if not dry_run:
            index.adopt_committed(vault, name)
        listed = [v for v in vault.catalog.versions(name) if (name, v.number) not in markers]
        reasons = kept_by_rules(policy, listed, now_ns)
        dropped, held = forgettable(vault, name, listed, set(reasons))
        for pin in held:
            reasons.setdefault(pin.version, []).append(
                Reason("pinned", f"files changed in v{pin.changed_in}")
            )
        drop = tuple(dropped)
        if not dry_run and drop:
            for number in drop:
                vault.mark_forgotten(name, number, now_ns)
            with vault.catalog.writer() as w:
                for number in drop:
                    w.delete_version(name, number)
        kept = tuple(v.number for v in listed if v.number not in drop)
        why = {n: tuple(reasons[n]) for n in kept}
        created = {v.number: v.created_ns for v in listed}
        results.append(ForgetResult(name, policy, kept, drop, dry_run, tuple(held), why, created))
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
    requested: list[str], configured: dict[str, KeepPolicy], override: KeepPolicy
) -> tuple[dict[str, KeepPolicy], list[str]]:
    """Which collections to forget in and the keep rules of each.

    Rules given on the command line (`override`, when not empty) replace a collection's
    configured rules as a whole. Returns (collection → rules, configured collections
    skipped for having no rules). A collection named explicitly without rules is a
    ConfigError; so is an unknown name.
    """
    names = requested or list(configured)
    policies: dict[str, KeepPolicy] = {}
    skipped: list[str] = []
    for name in names:
        if name not in configured:
            known = ", ".join(configured) or "none"
            raise ConfigError(f"no collection named {name!r} in the config (configured: {known})")
        policy = configured[name] if override.empty else override
        if policy.empty:
            if requested:
                raise ConfigError(
                    f"collection {name!r} has no keep rules: pass --keep N, --keep-daily N, ... or "
                    f"set [collections.{name}].keep_versions, keep_daily, ... (see docs/retention.md)"
                )
            skipped.append(name)
            continue
        policies[name] = policy
    return policies, skipped
