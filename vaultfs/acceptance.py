"""An *acceptance*: the owner's word that changes to a cold collection were intended.

In a cold collection a version that holds the last copy of content a newer version
replaced or deleted is *pinned* (`vaultfs.retention.pins`): forget skips it and prune
keeps its bands. ``vaultfs accept COLLECTION[@vN] [PATH…]`` releases it by recording
an `Acceptance`: every change seen up to version ``up_to`` (only under ``paths``, when
given) was intended. Each one is a write-once object on the store,
``accepted/<collection>/<up_to>-<at_ns>.json`` (`accepted_key`), and a row of the local
catalog; the store copy is the truth (an index rebuild brings it back), the catalog
copy lets ``vaultfs versions`` show who accepted what without asking the store.
Acceptances are never changed or deleted: together they are the log that lets a
later audit tell rot from edits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vaultfs.model import from_text, to_text

ACCEPTED_PREFIX = "accepted/"
_ACCEPTED_KEY = re.compile(r"^accepted/([^/]+)/(\d+)-(\d+)\.json$")

AcceptanceKey = tuple[str, int, int]  # collection, up_to, at_ns: names one acceptance


def accepted_key(collection: str, up_to: int, at_ns: int) -> str:
    """The store key of an acceptance (one per `accept` run: the time makes it unique)."""
    return f"{ACCEPTED_PREFIX}{collection}/{up_to}-{at_ns}.json"


def parse_accepted_key(key: str) -> AcceptanceKey | None:
    """(collection, up_to, at_ns) of an acceptance's store key; None for any other key."""
    m = _ACCEPTED_KEY.match(key)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def under(path: bytes, top: bytes) -> bool:
    """Whether `path` (relative to the collection's root) is `top` or lies below it."""
    return path == top or path.startswith(top + b"/")


@dataclass(frozen=True, slots=True)
class Acceptance:
    """Changes of `collection` up to version `up_to`, under `paths` (empty: everywhere),
    were intended: said by `by` (user@host) at `at_ns` (UTC, ns since the epoch)."""

    collection: str
    up_to: int
    paths: tuple[bytes, ...]
    by: str
    at_ns: int

    @property
    def key(self) -> AcceptanceKey:
        return self.collection, self.up_to, self.at_ns

    @property
    def store_key(self) -> str:
        return accepted_key(self.collection, self.up_to, self.at_ns)

    def covers(self, pinned: int, path: bytes) -> bool:
        """Whether this acceptance covers a change of `path` that pins version `pinned`.

        The change lies somewhere after `pinned`, up to the next listed version S (the
        one it is seen in). It is covered when ``up_to`` lies in that range or beyond,
        that is when ``pinned < up_to``: not only when ``S <= up_to``. Forgetting an
        unpinned version between `pinned` and S moves S later (the change is then seen in
        the version after the forgotten one), and an acceptance made before must keep
        covering it. That is safe because a version is forgotten only while unpinned:
        whatever of it changed in the next version was accepted by an acceptance with a
        later ``up_to``, which covers that change here too."""
        return pinned < self.up_to and (not self.paths or any(under(path, p) for p in self.paths))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "collection": self.collection,
            "up_to": self.up_to,
            "paths": [to_text(p) for p in self.paths],
            "by": self.by,
            "at_ns": self.at_ns,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Acceptance:
        if d.get("format") != 1:
            raise ValueError(f"unknown acceptance format {d.get('format')!r}")
        return Acceptance(
            collection=str(d["collection"]),
            up_to=int(d["up_to"]),
            paths=tuple(from_text(str(p)) for p in d["paths"]),
            by=str(d["by"]),
            at_ns=int(d["at_ns"]),
        )
