"""Pinned good copies: what ``forget`` must skip in a cold collection, and ``accept``.

A cold collection is expected to only grow, so content that a newer version replaced
or deleted may be rot or an accident; the version holding its last copy is *pinned*
until the owner accepts the change (`vaultfs.acceptance`). Pins are derived, never
stored: walk the collection's listed versions oldest to newest; version V is pinned
when a file of V is replaced (other content under the same path) or deleted in the
next listed version S, and no acceptance covers that path with ``up_to > V``
(`Acceptance.covers`: ``up_to`` anywhere from V's successor on, so forgetting a version
between V and S never takes an acceptance's cover away). The
tree diff (`vaultfs.snapshot.diff`) skips unchanged subtrees by id, so this costs a
walk of what changed, not of the versions.

Why the next *listed* version: forgetting an unpinned version in between leaves the
pin right, because content that survived into the forgotten version is compared with
the version after it (and content changed back to what V held pins nothing: V is no
longer the last copy). Warm collections are never pinned; a collection the config
does not name is treated as cold.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vaultfs.acceptance import Acceptance, under
from vaultfs.errors import UsageError
from vaultfs.model import VersionInfo, to_text
from vaultfs.output import display_path
from vaultfs.snapshot.diff import diff_versions
from vaultfs.vault import Vault


@dataclass(frozen=True, slots=True)
class Pin:
    """Version `version` holds the last copy of files that version `changed_in` (the next
    listed one) replaced or deleted, and no acceptance covers them."""

    collection: str
    version: int
    changed_in: int
    replaced: tuple[bytes, ...]
    deleted: tuple[bytes, ...]

    @property
    def paths(self) -> tuple[bytes, ...]:
        return self.replaced + self.deleted

    def describe(self) -> str:
        """``v1 pinned: holds 1 file replaced in v2`` (and/or ``… N files deleted …``)."""
        kinds = ((self.replaced, "replaced"), (self.deleted, "deleted"))
        parts = [f"{_files(len(paths))} {what}" for paths, what in kinds if paths]
        return f"v{self.version} pinned: holds {' and '.join(parts)} in v{self.changed_in}"

    @property
    def accept_command(self) -> str:
        return f"vaultfs accept {self.collection}@v{self.changed_in}"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "changed_in": self.changed_in,
            "files": len(self.paths),
            "replaced": [to_text(p) for p in self.replaced],
            "deleted": [to_text(p) for p in self.deleted],
            "release": self.accept_command,
        }


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def is_cold(vault: Vault, collection: str) -> bool:
    """Whether `collection` is pinned as cold: not warm by the config or, for a hub client's
    collection, by what the hub recorded (unknown: cold, the safe side)."""
    return vault.collection_tier(collection) != "warm"


def pins(
    vault: Vault,
    collection: str,
    versions: Iterable[VersionInfo] | None = None,
    acceptances: Iterable[Acceptance] | None = None,
) -> dict[int, Pin]:
    """The pinned versions of `collection` by number, among `versions` (default: the ones
    the catalog lists) under `acceptances` (default: the catalog's)."""
    if not is_cold(vault, collection):
        return {}
    listed = vault.catalog.versions(collection) if versions is None else list(versions)
    accepted = vault.catalog.acceptances(collection) if acceptances is None else list(acceptances)
    out: dict[int, Pin] = {}
    for old, new in itertools.pairwise(listed):
        changes = diff_versions(vault, old.root, new.root, {})
        replaced = _unaccepted(changes.modified, old.number, accepted)
        deleted = _unaccepted(changes.deleted, old.number, accepted)
        if replaced or deleted:
            out[old.number] = Pin(collection, old.number, new.number, replaced, deleted)
    return out


def _unaccepted(paths: list[bytes], pinned: int, accepted: list[Acceptance]) -> tuple[bytes, ...]:
    """The paths changed after version `pinned` (in the next listed one) that no acceptance covers."""
    return tuple(p for p in paths if not any(a.covers(pinned, p) for a in accepted))


def forgettable(
    vault: Vault, collection: str, listed: list[VersionInfo], kept: set[int]
) -> tuple[list[int], list[Pin]]:
    """Which of `listed` to forget when the keep rules keep the numbers in `kept`
    (`vaultfs.retention.policy`): every other one that is not pinned; and the pins of
    the others, kept for being pinned.

    Pins are computed again after each round of drops, until none is added: dropping a
    version changes what its predecessor is compared with (content changed back to what
    the predecessor held no longer pins it)."""
    remaining = list(listed)
    drop: list[int] = []
    while True:
        current = pins(vault, collection, remaining)
        others = [v for v in remaining if v.number not in kept]
        more = {v.number for v in others if v.number not in current}
        if not more:
            return sorted(drop), [current[v.number] for v in others]
        drop += sorted(more)
        remaining = [v for v in remaining if v.number not in more]


@dataclass(frozen=True, slots=True)
class AcceptResult:
    collection: str
    up_to: int
    acceptance: Acceptance | None  # None: nothing was pinned up to `up_to`; nothing recorded
    released: tuple[int, ...]  # versions no longer pinned because of it
    pinned: tuple[Pin, ...]  # versions still pinned after it
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "up_to": self.up_to,
            "recorded": self.acceptance is not None and not self.dry_run,
            "acceptance": None if self.acceptance is None else acceptance_json(self.acceptance),
            "released": list(self.released),
            "pinned": [p.to_json() for p in self.pinned],
            "dry_run": self.dry_run,
        }


def acceptance_json(a: Acceptance) -> dict[str, Any]:
    """An acceptance as `vaultfs versions --json` and `accept --json` show it."""
    return {
        "up_to": a.up_to,
        "paths": [to_text(p) for p in a.paths],
        "by": a.by,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.at_ns / 1e9)),
        "at_ns": a.at_ns,
    }


def accept(
    vault: Vault,
    collection: str,
    number: int | None,
    paths: list[bytes],
    *,
    by: str,
    dry_run: bool = False,
    now: Callable[[], int] = time.time_ns,
) -> AcceptResult:
    """Record that the changes of `collection` up to version `number` (None: the latest),
    under `paths` (relative to the root; empty: all), were intended.

    UsageError for a warm collection, an unknown version, and a path under which no
    pinned file lies. Nothing pinned up to that version: nothing is recorded. Not
    ``dry_run``: the caller holds the vault lock.
    """
    if not is_cold(vault, collection):
        raise UsageError(f"collection {collection} is warm: its versions are never pinned; nothing to accept")
    if not dry_run:
        vault.sync_acceptances()  # an accept killed between its two writes left one behind
    version = vault.resolve_version(collection, number)
    before = pins(vault, collection)
    due = [p for p in before.values() if p.version < version.number]  # what it can cover
    whole = not paths or b"" in paths
    for top in [] if whole else paths:
        if not any(under(f, top) for p in due for f in p.paths):
            raise UsageError(
                f"nothing to accept under '{display_path(top)}': no file pinned up to "
                f"{collection}@v{version.number} lies there (`vaultfs versions {collection}` shows the pins)"
            )
    if not due:
        return AcceptResult(collection, version.number, None, (), tuple(before.values()), dry_run)
    acceptance = Acceptance(collection, version.number, () if whole else tuple(paths), by, now())
    if not dry_run:
        vault.record_acceptance(acceptance)
    after = pins(vault, collection, acceptances=[*vault.catalog.acceptances(collection), acceptance])
    released = tuple(n for n in before if n not in after)
    return AcceptResult(collection, version.number, acceptance, released, tuple(after.values()), dry_run)
