"""What the store holds, from three LISTs: version records (``versions/``), forgotten
markers (``forgotten/<collection>/<n>.json``, written by ``forget``: they hide a version
on every rung of the ladder) and band objects with their sidecars (``bands/``); and
whether a listed band object can be read now (its storage class and restore state,
judged by `vaultfs.model`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vaultfs.errors import CorruptionError
from vaultfs.index.objects import VersionKey
from vaultfs.model import BandId, BandState, listed_band_state, needs_restore, parse_band_id
from vaultfs.store import ObjectInfo, ObjectNotFound, ObjectStore

FORGOTTEN_PREFIX = "forgotten/"
_VERSION_KEY = re.compile(r"^versions/(.+)/(\d+)\.json$")
_FORGOTTEN_KEY = re.compile(r"^forgotten/(.+)/(\d+)\.json$")
_BAND_KEY = re.compile(r"^bands/(.+)\.tar\.zst$")  # any name: parse_band_id judges it
_SIDECAR_KEY = re.compile(r"^bands/(.+)\.catalog\.zst$")


@dataclass(slots=True)
class StoreListing:
    """What the store holds, from three LISTs (versions/, forgotten/, bands/)."""

    records: dict[VersionKey, str]  # version record keys
    forgotten: set[VersionKey]
    bands: dict[BandId, ObjectInfo]  # band objects
    sidecars: dict[BandId, ObjectInfo]
    damaged: list[str] = field(default_factory=list)  # keys under bands/ that name no band id

    @staticmethod
    def read(store: ObjectStore) -> StoreListing:
        records: dict[VersionKey, str] = {}
        for info in store.list("versions/"):
            m = _VERSION_KEY.match(info.key)
            if m:
                records[m.group(1), int(m.group(2))] = info.key
        forgotten = set()
        for info in store.list(FORGOTTEN_PREFIX):
            m = _FORGOTTEN_KEY.match(info.key)
            if m:
                forgotten.add((m.group(1), int(m.group(2))))
        bands: dict[BandId, ObjectInfo] = {}
        sidecars: dict[BandId, ObjectInfo] = {}
        damaged: list[str] = []
        for info in store.list("bands/"):
            m = _BAND_KEY.match(info.key) or _SIDECAR_KEY.match(info.key)
            if not m:
                continue
            try:
                band = parse_band_id(m.group(1), info.key)
            except CorruptionError:
                damaged.append(
                    f"store object {info.key!r} does not name a vaultfs band id "
                    "(damaged or foreign data, not used)"
                )
                continue
            (bands if info.key.endswith(".tar.zst") else sidecars)[band] = info
        return StoreListing(records, forgotten, bands, sidecars, damaged)

    def committed(self) -> set[VersionKey]:
        """Versions whose record exists and that are not forgotten."""
        return set(self.records) - self.forgotten


def band_state(info: ObjectInfo) -> BandState:
    """The state of a listed (or HEADed) band object: its storage class and restore header
    read by `model.listed_band_state`."""
    return listed_band_state(info.storage_class, info.restore)


def readable_on_store(store: ObjectStore, info: ObjectInfo) -> bool:
    """Whether the band object can be read now (HEAD for the restore state if archived).
    Not `model.readable_now`: that asks the catalog's BandInfo, this asks the store."""
    if not needs_restore(info.storage_class):
        return True
    try:
        return band_state(store.head(info.key)) == "restored"
    except ObjectNotFound:
        return False
