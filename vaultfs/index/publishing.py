"""Publishing: bringing the consolidated index on the store up to date with the local
catalog (after a snapshot, a prune, or a rebuild).

Each publish writes one delta holding every version and band not yet published (what
`IndexState`, the LMDB meta ``index``, says was published last), and a full object when
`CONSOLIDATE_AFTER` deltas follow the newest full one; generations are taken with
If-None-Match, so two machines never write the same one. The object format is in
`objects`.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from vaultfs import band as bandfmt
from vaultfs import testpoints
from vaultfs.band import sidecar_blobs
from vaultfs.catalog import Catalog
from vaultfs.errors import CorruptionError, VaultError
from vaultfs.index.objects import (
    INDEX_FORMAT,
    INDEX_PREFIX,
    IndexContent,
    encode_index_object,
    index_key,
    list_index,
    load_index,
    unverified,
)
from vaultfs.model import (
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    Entry,
    TreeId,
    VersionInfo,
    decode_tree,
    sidecar_key,
)
from vaultfs.store import ObjectExists, ObjectNotFound, ObjectStore
from vaultfs.vault import Vault
from vaultfs.walk import reachable

log = logging.getLogger(__name__)

CONSOLIDATE_AFTER = 32  # deltas after the newest full object before writing a new full one


@dataclass(slots=True)
class Published:
    key: str
    versions: int
    bands: int
    trees: int


def publish(vault: Vault, *, full: bool = False) -> list[Published]:
    """Bring the consolidated index up to date with the local catalog; the caller holds
    the vault lock. Writes one delta with every version and band not yet indexed (nothing
    when there is none), then a full object when `CONSOLIDATE_AFTER` deltas follow the
    newest full one (or when `full`). Failures are logged, not raised: the index is a
    copy, and the next snapshot (or ``vaultfs index rebuild``) catches up."""
    try:
        return publish_or_raise(vault, full=full)
    except VaultError as e:
        log.warning("the consolidated index was not updated (%s); the next snapshot catches up", e.message)
        return []


def publish_or_raise(vault: Vault, *, full: bool) -> list[Published]:
    catalog, store = vault.catalog, vault.store
    testpoints.reach("index-publish")
    state = IndexState.read(catalog)
    pending_versions = [
        v for c in catalog.collections() for v in catalog.versions(c) if v.number > state.versions.get(c, 0)
    ]
    pending_bands = [b for b in catalog.bands() if b.created_ns > state.bands_ns]
    out: list[Published] = []
    if not pending_versions and not pending_bands and not full and not state.needs_full:
        return out
    store.abort_incomplete_uploads(INDEX_PREFIX)  # temp files of a killed earlier publish
    objects = list_index(store)
    latest = max([state.generation, *(g for g, _, _ in objects)])
    deltas_since_full = sum(
        1
        for g, k, _ in objects
        if k == "delta" and g > max([0, *(g2 for g2, k2, _ in objects if k2 == "full")])
    )
    vault_id = catalog.meta("vault_id") or ""
    if (pending_versions or pending_bands) and not state.needs_full:
        doc = _delta_doc(vault, pending_versions, pending_bands)
        key, latest = _put_next(store, doc, "delta", latest, vault_id)
        out.append(Published(key, len(doc["versions"]), len(doc["bands"]), len(doc["trees"])))
        deltas_since_full += 1
    if full or state.needs_full or deltas_since_full >= CONSOLIDATE_AFTER:
        loaded = load_index(store, vault_id)
        content = loaded.content if not loaded.problems else IndexContent()
        _merge_catalog(content, catalog)
        doc = _content_doc(content)
        key, latest = _put_next(store, doc, "full", latest, vault_id)
        out.append(Published(key, len(doc["versions"]), len(doc["bands"]), len(doc["trees"])))
    with catalog.writer() as w:
        for v in pending_versions:
            state.versions[v.collection] = max(state.versions.get(v.collection, 0), v.number)
        state.bands_ns = max([state.bands_ns, *(b.created_ns for b in pending_bands)])
        state.generation = latest
        state.needs_full = False
        state.write(w)
    return out


def _put_next(
    store: ObjectStore, doc: dict[str, Any], kind: str, latest: int, vault_id: str
) -> tuple[str, int]:
    """Write `doc` as the next generation after `latest` (If-None-Match; on a clash with
    another machine, the one after). Returns its key and generation."""
    for _ in range(100):
        latest += 1
        doc.update(generation=latest, kind=kind, vault_id=vault_id)
        key = index_key(latest, kind)
        data = encode_index_object(doc)
        try:
            store.put(key, data, if_none_match=True)
        except ObjectExists:
            continue
        if store.get(key) != data:  # re-read what was written: the store holds these bytes
            raise CorruptionError(f"{key}: the store returned other bytes than were written")
        testpoints.reach("index-object-written")
        return key, latest
    raise VaultError("could not find a free index generation: run `vaultfs check`")


def _delta_doc(vault: Vault, versions: list[VersionInfo], bands: list[BandInfo]) -> dict[str, Any]:
    """The delta document for `versions` and `bands`: trees and blob placements come from
    the bands' sidecars (what the store holds), the local catalog filling any gaps."""
    content = IndexContent()
    sidecars = _Sidecars(vault.store)
    for v in versions:
        content.versions[v.collection, v.number] = unverified(v)
        doc = sidecars.get(v.bands[-1]) if v.bands else None
        if doc is not None and isinstance(doc.get("trees"), dict):
            for tid_hex, text in doc["trees"].items():
                content.add_tree(TreeId(bytes.fromhex(tid_hex)), text.encode("utf-8", "surrogateescape"))
        # Trees the sidecar lacks (or all, if it is unreadable) come from the local catalog.
        _add_closure(content, vault.catalog, v.root)
    _add_band_blobs(content, vault.catalog, bands, sidecars)
    return _content_doc(content)


class _Sidecars:
    """Decoded sidecars, each read from the store once (None: missing or damaged)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.docs: dict[BandId, dict[str, Any] | None] = {}

    def get(self, band: BandId) -> dict[str, Any] | None:
        if band not in self.docs:
            try:
                self.docs[band] = bandfmt.decode_sidecar(self.store.get(sidecar_key(band)))
            except (CorruptionError, ObjectNotFound):
                self.docs[band] = None
        return self.docs[band]


def _add_band_blobs(
    content: IndexContent, catalog: Catalog, bands: list[BandInfo], sidecars: _Sidecars
) -> None:
    """Add `bands` and their blobs: from each band's sidecar, or from the local catalog
    for a band whose sidecar cannot be read."""
    missing = set()
    for b in bands:
        content.bands[b.band] = b
        doc = sidecars.get(b.band)
        if doc is None:
            missing.add(b.band)
            continue
        for sha, offset, size in sidecar_blobs(doc):
            content.blobs.setdefault(BlobId(sha), BlobRef(b.band, offset, size))
    if missing:
        for blob, ref in catalog.iter_blobs():
            if ref.band in missing:
                content.blobs.setdefault(blob, ref)


def _add_closure(content: IndexContent, catalog: Catalog, root: TreeId) -> None:
    """Add every tree reachable from `root` that `content` lacks (from the local catalog)."""

    def load(tid: TreeId) -> tuple[Entry, ...] | None:
        raw = catalog.tree_bytes(tid)
        if raw is None:
            return None
        content.trees[tid] = raw
        return decode_tree(raw)

    for _ in reachable(load, [root], set(content.trees)):
        pass


def _merge_catalog(content: IndexContent, catalog: Catalog) -> None:
    for c in catalog.collections():
        for v in catalog.versions(c):
            content.versions[v.collection, v.number] = unverified(v)
    for tid, raw in catalog.iter_trees():
        content.trees.setdefault(tid, raw)
    for b in catalog.bands():
        content.bands[b.band] = b
    for blob, ref in catalog.iter_blobs():
        content.blobs[blob] = ref  # the catalog's placement wins (a healed blob's new copy)


def _content_doc(content: IndexContent) -> dict[str, Any]:
    blobs: dict[str, list[list[Any]]] = {}
    for blob, ref in content.blobs.items():
        blobs.setdefault(ref.band, []).append([blob.hex(), ref.offset, ref.size])
    return {
        "format": INDEX_FORMAT,
        "created_ns": time.time_ns(),
        "host": socket.gethostname(),
        "versions": [v.to_json() for _, v in sorted(content.versions.items())],
        "trees": {tid.hex(): enc.decode("utf-8", "surrogateescape") for tid, enc in content.trees.items()},
        "bands": [b.to_json() for _, b in sorted(content.bands.items())],
        "blobs": {band: sorted(rows, key=lambda r: int(r[1])) for band, rows in blobs.items()},
    }


@dataclass(slots=True)
class IndexState:
    """What of the local catalog is in the consolidated index (LMDB meta ``index``)."""

    generation: int = 0
    versions: dict[str, int] = field(default_factory=dict)  # collection -> highest number
    bands_ns: int = 0  # highest BandInfo.created_ns indexed
    needs_full: bool = False

    @staticmethod
    def read(catalog: Catalog) -> IndexState:
        raw = catalog.meta("index")
        if raw is None:
            return IndexState(needs_full=False)
        d = json.loads(raw)
        return IndexState(
            int(d["generation"]),
            {k: int(n) for k, n in d["versions"].items()},
            int(d["bands_ns"]),
            bool(d.get("needs_full", False)),
        )

    def write(self, w: Any) -> None:
        w.set_meta(
            "index",
            json.dumps(
                {
                    "generation": self.generation,
                    "versions": self.versions,
                    "bands_ns": self.bands_ns,
                    "needs_full": self.needs_full,
                },
                sort_keys=True,
            ),
        )
