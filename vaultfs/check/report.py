"""What `vaultfs check` found: the report, its findings, the source comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vaultfs import heal
from vaultfs.model import (
    BandId,
    BlobId,
    to_text,
)


@dataclass(slots=True)
class Finding:
    what: str
    affects: list[str] = field(default_factory=list)
    advice: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "affects": self.affects, "advice": self.advice}


@dataclass(slots=True)
class SourceReport:
    collection: str
    version: int | None = None
    files: int = 0
    hashed: int = 0
    bitrot: list[str] = field(default_factory=list)  # same size and mtime, other bytes
    modified: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "files": self.files,
            "hashed": self.hashed,
            "bitrot_suspected": self.bitrot,
            "modified": self.modified,
            "added": self.added,
            "deleted": self.deleted,
            "unreadable": self.unreadable,
        }


@dataclass(slots=True)
class CheckReport:
    problems: list[Finding] = field(default_factory=list)
    not_read: list[dict[str, Any]] = field(default_factory=list)  # archived bands
    not_read_cost: dict[str, Any] | None = None  # what restoring them all for a read costs
    checked: dict[str, int] = field(default_factory=dict)
    source: SourceReport | None = None
    lost: list[heal.LostFiles] = field(default_factory=list)  # files whose bytes are lost
    notes: list[str] = field(default_factory=list)  # worth knowing, not problems
    missing_bands: list[BandId] = field(default_factory=list)  # to record (`record`)
    damaged_blobs: dict[BlobId, BandId] = field(default_factory=dict)  # to record

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
            "not_read": self.not_read,
            "not_read_restore": self.not_read_cost,
            "checked": self.checked,
            "source": self.source.to_json() if self.source else None,
            "lost": [
                {
                    "collection": x.collection,
                    "version": x.version,
                    "for_good": x.for_good,
                    "paths": [to_text(p) for p in x.paths],
                }
                for x in self.lost
            ],
            "notes": self.notes,
        }


REBUILD = "run `vaultfs index rebuild`"
LIST_LIMIT = 20  # paths named in one problem line (--json lists all)
