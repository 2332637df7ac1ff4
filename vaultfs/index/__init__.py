"""The consolidated index on the store, and the rebuild ladder (docs/recovery.md).

Index objects
-------------
The store keeps a copy of the vault's index under ``index/`` so that losing the
NAS (or its LMDB) never costs a backup. It is written incrementally: each
snapshot that commits something appends one small *delta* object; once
`CONSOLIDATE_AFTER` deltas follow the newest *full* object, a new full object
(everything up to its generation) is written. Nothing is rewritten in place;
old objects stay until ``prune`` (and make rung 2 more robust meanwhile).

* key: ``index/<generation:012d>-<kind>.zst``, kind ``delta`` or ``full``;
  generations are written with If-None-Match, so two machines never share one;
* bytes: ``b"VAULTFS-INDEX1 " + <64 hex SHA-256 of the rest> + b"\\n"``
  followed by one zstd frame with a content checksum, which decompresses to
  the JSON document (``sort_keys``, compact)::

    {"format": 1, "kind": "delta"|"full", "generation": G, "vault_id": ID,
     "created_ns": T, "host": H,
     "versions": [VersionInfo.to_json(), ...],
     "trees": {"<tree id hex>": "<canonical tree encoding>", ...},
     "bands": [BandInfo.to_json(), ...],
     "blobs": {"<band id>": [["<sha256 hex>", offset, size], ...], ...}}

  A delta holds what its generation added; a full object holds everything up
  to its generation. Loading = newest verifiable full object + every delta
  after it, in order (merging is a union, so repeats are harmless; a blob
  placed twice takes the later placement: it was stored again because the
  earlier band was lost).
  ``tail -c +80 OBJ | zstd -dc`` shows the JSON with standard tools.

Forgotten versions: ``forgotten/<collection>/<n>.json`` markers (written by
``forget``) hide a version on every rung of the ladder.

The ladder
----------
`rebuild` builds a fresh LMDB next to the live one and swaps it in. Rungs:
1 the local LMDB (verified: every record parses, trees hash to their ids,
every version's trees, blobs and bands resolve, no committed version is
missing); 2 the index objects; 3 band sidecars + version records; 4 the
catalog at the end of each band (ranged GET; archived bands need a restore,
planned and confirmed first); 5 a full read of each band's tar stream,
re-hashing every member (a damaged band is salvaged: every member before and
after the damage that verifies is kept). A rung is used only when the ones
above fail verification; a band whose sidecar is bad falls to rung 4 and then
5 on its own, and versions committed after the newest index object are topped
up from their sidecars. On rungs 3-5 a version whose trees exist somewhere is
installed even when some of its files' blobs are in no readable band: those
blobs are recorded as lost (`Catalog.lost_blobs`) and reported. After a
rebuild, damaged version records and sidecars are rewritten from verified
copies and the consolidated index is brought up to date (a new full object
when the old chain is unusable).

Concurrency: callers hold the vault lock (`Vault.lock`) for `publish` and
`rebuild`; `load_index` and `verify_catalog` only read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import socket
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from vaultfs import band as bandfmt
from vaultfs import testpoints
from vaultfs.catalog import Catalog, check_data_file
from vaultfs.config import Config
from vaultfs.errors import CorruptionError, StoreSetupError, VaultError
from vaultfs.model import (
    VAULT_KEY,
    BandId,
    BandInfo,
    BandState,
    BlobId,
    BlobRef,
    LostBlob,
    TreeId,
    VersionInfo,
    band_file,
    band_key,
    decode_tree,
    parse_band_id,
    sidecar_key,
    tree_id,
    version_key,
)
from vaultfs.output import display_path
from vaultfs.store import ObjectArchived, ObjectExists, ObjectInfo, ObjectNotFound, ObjectStore
from vaultfs.store.base import StoreError
from vaultfs.vault import Vault

log = logging.getLogger(__name__)

INDEX_PREFIX = "index/"
FORGOTTEN_PREFIX = "forgotten/"
INDEX_MAGIC = b"VAULTFS-INDEX1 "
INDEX_FORMAT = 1
CONSOLIDATE_AFTER = 32  # deltas after the newest full object before writing a new full one
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE", "GLACIER_IR_ARCHIVE"})
RUNGS = ("lmdb", "index", "sidecars", "tails", "scan")
_INDEX_KEY = re.compile(r"^index/(\d{12})-(delta|full)\.zst$")
_VERSION_KEY = re.compile(r"^versions/(.+)/(\d+)\.json$")
_FORGOTTEN_KEY = re.compile(r"^forgotten/(.+)/(\d+)\.json$")
_BAND_KEY = re.compile(r"^bands/(.+)\.tar\.zst$")  # any name: parse_band_id judges it
_SIDECAR_KEY = re.compile(r"^bands/(.+)\.catalog\.zst$")

VersionKey = tuple[str, int]


# ---- index content ------------------------------------------------------------------------


@dataclass(slots=True)
class IndexContent:
    """Everything an index can hold; what a rung of the ladder produces."""

    versions: dict[VersionKey, VersionInfo] = field(default_factory=dict)
    trees: dict[TreeId, bytes] = field(default_factory=dict)
    bands: dict[BandId, BandInfo] = field(default_factory=dict)
    blobs: dict[BlobId, BlobRef] = field(default_factory=dict)
    generation: int = 0

    def merge_doc(self, doc: dict[str, Any], where: str = "index object") -> None:
        """Add an index document's records (ValueError/KeyError on malformed ones; `where`
        names the object in them)."""
        for v in doc["versions"]:
            version = VersionInfo.from_json(v, where)
            self.versions[version.collection, version.number] = version
        for tid_hex, text in doc["trees"].items():
            self.add_tree(TreeId(bytes.fromhex(tid_hex)), text.encode("utf-8", "surrogateescape"))
        for b in doc["bands"]:
            info = BandInfo.from_json(b, where)
            self.bands[info.band] = info
        for band, rows in doc["blobs"].items():
            band_id = parse_band_id(band, where)
            for sha, offset, size in rows:  # a later placement wins: a blob stored again
                # (its band was lost, docs/recovery.md) is read from its new copy
                self.blobs[BlobId(bytes.fromhex(sha))] = BlobRef(band_id, int(offset), int(size))

    def add_tree(self, tid: TreeId, encoded: bytes) -> None:
        if tree_id(encoded) != tid:
            raise ValueError(f"tree {tid.hex()[:16]} does not hash to its id")
        self.trees[tid] = encoded


def encode_index_object(doc: dict[str, Any]) -> bytes:
    """The bytes of an index object (see the module docstring)."""
    text = json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    body = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(text.encode("ascii"))
    return INDEX_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def decode_index_object(data: bytes, key: str = "?") -> dict[str, Any]:
    """Verify and parse an index object; CorruptionError naming `key` on any failure."""
    head_len = len(INDEX_MAGIC) + 65
    if not data.startswith(INDEX_MAGIC) or data[head_len - 1:head_len] != b"\n":
        raise CorruptionError(f"{key}: not an index object (bad header)")
    body = data[head_len:]
    if hashlib.sha256(body).hexdigest().encode() != data[len(INDEX_MAGIC):head_len - 1]:
        raise CorruptionError(f"{key}: fails its SHA-256")
    try:
        doc = json.loads(zstandard.ZstdDecompressor().decompress(body, allow_extra_data=False))
    except (zstandard.ZstdError, ValueError) as e:
        raise CorruptionError(f"{key}: does not decompress or parse: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise CorruptionError(f"{key}: unknown index format")
    return doc


def index_key(generation: int, kind: str) -> str:
    return f"{INDEX_PREFIX}{generation:012d}-{kind}.zst"


@dataclass(slots=True)
class LoadedIndex:
    content: IndexContent
    objects: list[str]  # keys used, in order
    problems: list[str]  # deltas after the base that failed verification
    skipped: list[str]  # newer full objects that failed verification (an older base used)
    latest_generation: int  # highest generation on the store (used or not)
    deltas_since_full: int


def list_index(store: ObjectStore) -> list[tuple[int, str, str]]:
    """(generation, kind, key) of every index object, by generation."""
    out = []
    for info in store.list(INDEX_PREFIX):
        m = _INDEX_KEY.match(info.key)
        if m:
            out.append((int(m.group(1)), m.group(2), info.key))
    return sorted(out)


def load_index(store: ObjectStore, vault_id: str,
               forgotten: set[VersionKey] | None = None) -> LoadedIndex:
    """Load the consolidated index: the newest full object that verifies (none: start
    empty), then every delta after it, in order. `problems` lists deltas after that base
    that fail verification (the content is then incomplete); `skipped` lists newer full
    objects that failed and were passed over for an older base."""
    objects = list_index(store)
    fulls = [o for o in objects if o[1] == "full"]
    skipped: list[str] = []
    content = IndexContent()
    used: list[str] = []
    base_gen = 0
    for gen, _, key in reversed(fulls):
        try:
            candidate = IndexContent()
            candidate.merge_doc(_read_index_doc(store, key, gen, vault_id), key)
        except (CorruptionError, ObjectNotFound) as e:
            skipped.append(_message(e))
            continue
        except (KeyError, ValueError, TypeError) as e:
            skipped.append(f"{key}: malformed record: {e}")
            continue
        content, base_gen, used = candidate, gen, [key]
        break
    deltas = [o for o in objects if o[1] == "delta" and o[0] > base_gen]
    problems: list[str] = []
    for gen, _, key in deltas:
        try:
            content.merge_doc(_read_index_doc(store, key, gen, vault_id), key)
            used.append(key)
        except (CorruptionError, ObjectNotFound) as e:
            problems.append(_message(e))
        except (KeyError, ValueError, TypeError) as e:
            problems.append(f"{key}: malformed record: {e}")
    if forgotten:
        for vk in forgotten:
            content.versions.pop(vk, None)
    content.generation = objects[-1][0] if objects else 0
    return LoadedIndex(content, used, problems, skipped, content.generation, len(deltas))


def superseded(store: ObjectStore) -> list[str]:
    """Index objects no load needs any more: everything older than the second-newest full
    object. `load_index` starts from the newest full object that verifies and reads the
    deltas after it; keeping two full objects (and every delta after the older one) keeps
    one fallback if the newest is damaged. With fewer than two full objects: nothing."""
    objects = list_index(store)
    fulls = [gen for gen, kind, _ in objects if kind == "full"]
    if len(fulls) < 2:
        return []
    floor = fulls[-2]
    return [key for gen, _, key in objects if gen < floor]


def _read_index_doc(store: ObjectStore, key: str, gen: int, vault_id: str) -> dict[str, Any]:
    doc = decode_index_object(store.get(key), key)
    if doc.get("generation") != gen or doc.get("vault_id") != vault_id:
        raise CorruptionError(f"{key}: generation or vault id does not match its name")
    return doc


def _message(e: Exception) -> str:
    return e.message if isinstance(e, VaultError) else str(e)


# ---- publishing after a snapshot ----------------------------------------------------------


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
        return _publish(vault, full=full)
    except VaultError as e:
        log.warning("the consolidated index was not updated (%s); the next snapshot "
                    "catches up", e.message)
        return []


def _publish(vault: Vault, *, full: bool) -> list[Published]:
    catalog, store = vault.catalog, vault.store
    testpoints.reach("index-publish")
    state = _IndexState.read(catalog)
    pending_versions = [
        v for c in catalog.collections() for v in catalog.versions(c)
        if v.number > state.versions.get(c, 0)
    ]
    pending_bands = [b for b in catalog.bands() if b.created_ns > state.bands_ns]
    out: list[Published] = []
    if not pending_versions and not pending_bands and not full and not state.needs_full:
        return out
    store.abort_incomplete_uploads(INDEX_PREFIX)  # temp files of a killed earlier publish
    objects = list_index(store)
    latest = max([state.generation, *(g for g, _, _ in objects)])
    deltas_since_full = sum(1 for g, k, _ in objects
                            if k == "delta" and g > max([0, *(g2 for g2, k2, _ in objects
                                                              if k2 == "full")]))
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


def _put_next(store: ObjectStore, doc: dict[str, Any], kind: str, latest: int,
              vault_id: str) -> tuple[str, int]:
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
        decode_index_object(store.get(key), key)  # re-read what was written
        testpoints.reach("index-object-written")
        return key, latest
    raise VaultError("could not find a free index generation: run `vaultfs check`")


def _delta_doc(vault: Vault, versions: list[VersionInfo], bands: list[BandInfo]) -> dict[str, Any]:
    content = IndexContent()
    sidecars: dict[BandId, dict[str, Any] | None] = {}

    def sidecar(band: BandId) -> dict[str, Any] | None:
        if band not in sidecars:
            try:
                sidecars[band] = bandfmt.decode_sidecar(vault.store.get(sidecar_key(band)))
            except (CorruptionError, ObjectNotFound):
                sidecars[band] = None
        return sidecars[band]

    for v in versions:
        content.versions[v.collection, v.number] = _unverified(v)
        doc = sidecar(v.bands[-1]) if v.bands else None
        if doc is not None and isinstance(doc.get("trees"), dict):
            for tid_hex, text in doc["trees"].items():
                content.add_tree(TreeId(bytes.fromhex(tid_hex)),
                                 text.encode("utf-8", "surrogateescape"))
        # Trees the sidecar lacks (or all, if it is unreadable) come from the local catalog.
        _add_closure(content, vault.catalog, v.root)
    missing = set()
    for b in bands:
        content.bands[b.band] = b
        doc = sidecar(b.band)
        if doc is None:
            missing.add(b.band)
            continue
        for sha, offset, size in _sidecar_blobs(doc):
            content.blobs.setdefault(BlobId(sha), BlobRef(b.band, offset, size))
    if missing:
        for blob, ref in vault.catalog.iter_blobs():
            if ref.band in missing:
                content.blobs.setdefault(blob, ref)
    return _content_doc(content)


def _add_closure(content: IndexContent, catalog: Catalog, root: TreeId) -> None:
    """Add every tree reachable from `root` that `content` lacks (from the local catalog)."""
    stack = [root]
    while stack:
        tid = stack.pop()
        if tid in content.trees:
            continue
        raw = catalog.tree_bytes(tid)
        if raw is None:
            continue
        content.trees[tid] = raw
        stack.extend(e.tree for e in decode_tree(raw) if e.kind == "dir" and e.tree is not None)


def _merge_catalog(content: IndexContent, catalog: Catalog) -> None:
    for c in catalog.collections():
        for v in catalog.versions(c):
            content.versions[v.collection, v.number] = _unverified(v)
    for tid, raw in catalog.iter_trees():
        content.trees.setdefault(tid, raw)
    for b in catalog.bands():
        content.bands[b.band] = b
    for blob, ref in catalog.iter_blobs():
        content.blobs[blob] = ref  # the catalog's placement wins (a healed blob's new copy)


def _unverified(v: VersionInfo) -> VersionInfo:
    """The version as committed (``verified_ns`` is local bookkeeping)."""
    return VersionInfo.from_json({**v.to_json(), "verified_ns": []})


def _content_doc(content: IndexContent) -> dict[str, Any]:
    blobs: dict[str, list[list[Any]]] = {}
    for blob, ref in content.blobs.items():
        blobs.setdefault(ref.band, []).append([blob.hex(), ref.offset, ref.size])
    return {
        "format": INDEX_FORMAT,
        "created_ns": time.time_ns(),
        "host": socket.gethostname(),
        "versions": [v.to_json() for _, v in sorted(content.versions.items())],
        "trees": {tid.hex(): enc.decode("utf-8", "surrogateescape")
                  for tid, enc in content.trees.items()},
        "bands": [b.to_json() for _, b in sorted(content.bands.items())],
        "blobs": {band: sorted(rows, key=lambda r: int(r[1])) for band, rows in blobs.items()},
    }


@dataclass(slots=True)
class _IndexState:
    """What of the local catalog is in the consolidated index (LMDB meta ``index``)."""

    generation: int = 0
    versions: dict[str, int] = field(default_factory=dict)  # collection -> highest number
    bands_ns: int = 0  # highest BandInfo.created_ns indexed
    needs_full: bool = False

    @staticmethod
    def read(catalog: Catalog) -> _IndexState:
        raw = catalog.meta("index")
        if raw is None:
            return _IndexState(needs_full=False)
        d = json.loads(raw)
        return _IndexState(int(d["generation"]), {k: int(n) for k, n in d["versions"].items()},
                           int(d["bands_ns"]), bool(d.get("needs_full", False)))

    def write(self, w: Any) -> None:
        w.set_meta("index", json.dumps({
            "generation": self.generation, "versions": self.versions,
            "bands_ns": self.bands_ns, "needs_full": self.needs_full}, sort_keys=True))


# ---- store listings -------------------------------------------------------------------------


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
                damaged.append(f"store object {info.key!r} does not name a vaultfs band id "
                               "(damaged or foreign data, not used)")
                continue
            (bands if info.key.endswith(".tar.zst") else sidecars)[band] = info
        return StoreListing(records, forgotten, bands, sidecars, damaged)

    def committed(self) -> set[VersionKey]:
        """Versions whose record exists and that are not forgotten."""
        return set(self.records) - self.forgotten


def band_state(info: ObjectInfo) -> BandState:
    if info.storage_class not in ARCHIVE_CLASSES:
        return "standard"
    if info.restore and 'ongoing-request="false"' in info.restore:
        return "restored"
    return "archived"


def readable(store: ObjectStore, info: ObjectInfo) -> bool:
    """Whether the band object can be read now (HEAD for the restore state if archived)."""
    if info.storage_class not in ARCHIVE_CLASSES:
        return True
    try:
        return band_state(store.head(info.key)) == "restored"
    except ObjectNotFound:
        return False


# ---- verifying a catalog (rung 1, and `vaultfs check`) --------------------------------------


@dataclass(slots=True)
class CatalogWalk:
    """Result of `verify_catalog`: problems, and which bands each version's files use."""

    problems: list[str] = field(default_factory=list)
    version_bands: dict[VersionKey, set[BandId]] = field(default_factory=dict)
    versions: dict[VersionKey, VersionInfo] = field(default_factory=dict)
    trees: int = 0
    blobs: int = 0
    lost: set[BlobId] = field(default_factory=set)  # named by versions, recorded as lost


def verify_catalog(catalog: Catalog) -> CatalogWalk:
    """Check the local catalog's structure: every record of every database passes its
    checksum (trees: hashes to its id), every record parses, and every version's trees,
    file blobs and their bands are present (a blob recorded as lost is listed in `lost`,
    not a problem: its bytes are gone, the catalog is whole). CorruptionError when LMDB
    cannot be read or any record is damaged (nothing read from such a catalog can be
    trusted); other problems are listed in the result."""
    damaged = catalog.damaged_records()
    if damaged:
        raise CorruptionError(
            "the local catalog is damaged: " + ", ".join(damaged[:3])
            + (" and more" if len(damaged) > 3 else "") + ": run `vaultfs index rebuild`")
    walk = CatalogWalk()
    for key, raw in catalog.iter_raw("versions"):
        try:
            v = VersionInfo.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as e:
            walk.problems.append(f"local catalog: version record {key!r} is unreadable: {e}")
            continue
        walk.versions[v.collection, v.number] = v
    bands = {}
    for key, raw in catalog.iter_raw("bands"):
        try:
            b = BandInfo.from_json(json.loads(raw))
            bands[b.band] = b
        except (ValueError, KeyError, TypeError) as e:
            walk.problems.append(f"local catalog: band record {key!r} is unreadable: {e}")
    tree_bands: dict[TreeId, set[BandId] | None] = {}  # None: incomplete
    lost = catalog.lost_blobs()

    def visit(tid: TreeId, where: str) -> set[BandId] | None:
        if tid in tree_bands:
            return tree_bands[tid]
        raw = catalog.tree_bytes(tid)
        used: set[BandId] | None = set()
        if raw is None or tree_id(raw) != tid:
            state = "missing" if raw is None else "corrupt (does not hash to its id)"
            walk.problems.append(f"local catalog: tree {tid.hex()[:16]} of {where} is {state}")
            tree_bands[tid] = None
            return None
        walk.trees += 1
        try:
            entries = decode_tree(raw)
        except (ValueError, KeyError) as e:
            walk.problems.append(f"local catalog: tree {tid.hex()[:16]} does not parse: {e}")
            tree_bands[tid] = None
            return None
        for ent in entries:
            if ent.kind == "dir" and ent.tree is not None:
                sub = visit(ent.tree, where)
                if sub is None:
                    used = None
                elif used is not None:
                    used |= sub
            elif ent.kind == "file" and ent.blob is not None and ent.hardlink is None:
                ref = catalog.blob(ent.blob)
                if ref is None and ent.blob in lost:  # known to be lost: not damage
                    walk.lost.add(ent.blob)
                    continue
                if ref is None:
                    walk.problems.append(
                        f"local catalog: {where} refers to blob {ent.blob.hex()[:16]} "
                        f"({display_path(ent.name)}) which no band holds")
                    used = None
                    continue
                walk.blobs += 1
                if ref.band not in bands:
                    walk.problems.append(
                        f"local catalog: blob {ent.blob.hex()[:16]} lies in band {ref.band}, "
                        "which the catalog does not know")
                if used is not None:
                    used.add(ref.band)
        tree_bands[tid] = used
        return used

    for vk, v in sorted(walk.versions.items()):
        used = visit(v.root, f"{vk[0]}@v{vk[1]}")
        walk.version_bands[vk] = set(used or ()) | set(b for b in v.bands if b in bands)
    return walk


# ---- the ladder ---------------------------------------------------------------------------


@dataclass(slots=True)
class BandCatalog:
    """One band's catalog as recovered by some rung."""

    info: BandInfo
    blobs: list[tuple[bytes, int, int]]  # (sha256, offset, size)
    trees: dict[TreeId, bytes]
    version: VersionInfo | None
    source: str  # "sidecar", "tail" or "scan"
    catalog_doc: dict[str, Any] | None = None
    damage: list[str] = field(default_factory=list)  # a salvage scan: what is damaged
    lost: list[tuple[bytes, int, int]] = field(default_factory=list)  # listed, not recovered


@dataclass(slots=True)
class RebuildReport:
    rung: str  # the rung the catalog came from
    why: list[str] = field(default_factory=list)  # why the rungs above were not used
    notes: list[str] = field(default_factory=list)  # fallbacks, top-ups, repairs
    problems: list[str] = field(default_factory=list)  # what could not be recovered
    plan: list[str] = field(default_factory=list)  # archived bands that need a restore
    versions: list[str] = field(default_factory=list)
    bands: dict[str, str] = field(default_factory=dict)  # band -> source of its catalog
    repairs: list[str] = field(default_factory=list)
    lost: dict[BlobId, LostBlob] = field(default_factory=dict)  # recorded as lost
    lost_files: dict[str, list[str]] = field(default_factory=dict)  # version -> paths
    damaged_bands: dict[str, list[str]] = field(default_factory=dict)  # band -> damage
    warnings: list[str] = field(default_factory=list)  # the catalog is whole, but ...

    def to_json(self) -> dict[str, Any]:
        return {"rung": self.rung, "why": self.why, "notes": self.notes,
                "problems": self.problems, "restore_plan": self.plan,
                "versions": self.versions, "band_sources": self.bands, "repairs": self.repairs,
                "lost_blobs": {b.hex(): lb.to_json() for b, lb in sorted(self.lost.items())},
                "lost_files": self.lost_files, "damaged_bands": self.damaged_bands,
                "warnings": self.warnings}


Confirm = Callable[[list[str]], bool]


class _Ladder:
    """Recovers band catalogs and versions from the store, rung by rung (3, 4, 5)."""

    def __init__(self, store: ObjectStore, listing: StoreListing, work_dir: Path,
                 confirm: Confirm, report: RebuildReport, restore_days: int,
                 restore_tier: str) -> None:
        self.store, self.listing, self.work_dir = store, listing, work_dir
        self.confirm, self.report = confirm, report
        self.restore_days, self.restore_tier = restore_days, restore_tier
        self.catalogs: dict[BandId, BandCatalog] = {}
        self._orphans: dict[BandId, BandCatalog] | None = None

    def orphans(self) -> dict[BandId, BandCatalog]:
        """Catalogs of bands whose object is gone from the store but whose sidecar is
        still there: they say which band held a lost blob, and carry trees and version
        copies (the last band of a snapshot holds them) that nothing else may have."""
        if self._orphans is None:
            self._orphans = {}
            for band in sorted(set(self.listing.sidecars) - set(self.listing.bands)):
                try:
                    self._orphans[band] = _from_sidecar(self.store, band, None)
                except (CorruptionError, ObjectNotFound, ValueError, KeyError, TypeError) as e:
                    self.report.notes.append(f"sidecar of the missing band {band} is not "
                                             f"usable either: {_message(e)}")
        return self._orphans

    def recover_bands(self, bands: Iterable[BandId], first: str) -> None:
        """Get the catalog of each band, starting at rung `first` (sidecars/tails/scan)."""
        order = RUNGS[RUNGS.index(first):]
        deferred: list[tuple[BandId, str]] = []
        for band in sorted(bands):
            obj = self.listing.bands.get(band)
            failures: list[str] = []
            for rung in order:
                if rung != "sidecars" and obj is not None and not readable(self.store, obj):
                    deferred.append((band, rung))
                    break
                try:
                    self.catalogs[band] = self._fetch(band, rung, obj)
                    break
                except (CorruptionError, ObjectNotFound, ObjectArchived, ValueError,
                        KeyError, TypeError, tarfile.TarError) as e:
                    failures.append(f"{rung}: {_message(e)}")
            if band in self.catalogs and failures:
                self.report.notes.append(
                    f"band {band}: catalog from its {self.catalogs[band].source} because "
                    + "; ".join(failures))
            elif band not in self.catalogs and not any(d[0] == band for d in deferred):
                self.report.problems.append(f"band {band}: no catalog recovered ("
                                            + "; ".join(failures) + ")")
        if deferred:
            self._archived(deferred)

    def _archived(self, deferred: list[tuple[BandId, str]]) -> None:
        total = sum(self.listing.bands[b].size for b, _ in deferred)
        plan = [f"restore {len(deferred)} archived band(s), {total} bytes, tier "
                f"{self.restore_tier}, kept {self.restore_days} days, to read their catalogs:"]
        plan += [f"  {band_key(b)} ({self.listing.bands[b].size} bytes, "
                 f"{self.listing.bands[b].storage_class})" for b, _ in deferred]
        self.report.plan = plan
        if not self.confirm(plan):
            self.report.problems += [f"band {b}: archived; not restored (pass --yes to restore)"
                                     for b, _ in deferred]
            return
        for band, rung in deferred:
            key = band_key(band)
            try:
                self.store.restore(key, self.restore_days, self.restore_tier)  # type: ignore[attr-defined]
                info = self.store.head(key)
            except StoreError as e:
                self.report.problems.append(f"band {band}: restore failed: {e.message}")
                continue
            if band_state(info) != "restored":
                self.report.problems.append(
                    f"band {band}: restore requested; run `vaultfs index rebuild` again "
                    "when it is ready (`vaultfs restore status`)")
                continue
            try:
                self.catalogs[band] = self._fetch(band, rung, info)
            except (CorruptionError, ObjectNotFound, ObjectArchived, ValueError, KeyError,
                    TypeError, tarfile.TarError) as e:
                self.report.problems.append(f"band {band}: {rung}: {_message(e)}")

    def _fetch(self, band: BandId, rung: str, obj: ObjectInfo | None) -> BandCatalog:
        if rung == "sidecars":
            return _from_sidecar(self.store, band, obj)
        if obj is None:
            raise ObjectNotFound(f"band object {band_key(band)} is not on the store")
        if rung == "tails":
            return _from_tail(self.store, band, obj)
        return _from_scan(self.store, band, obj, self.work_dir)

    def versions(self, wanted: set[VersionKey]) -> dict[VersionKey, VersionInfo]:
        """The committed versions in `wanted`: the record, checked against the copy in its
        last band's catalog (which wins: it is checksummed)."""
        copies = {(c.version.collection, c.version.number): c.version
                  for c in [*self.orphans().values(), *self.catalogs.values()]
                  if c.version is not None}
        out: dict[VersionKey, VersionInfo] = {}
        for vk in sorted(wanted):
            record: VersionInfo | None = None
            err = ""
            try:
                key = self.listing.records[vk]
                record = VersionInfo.from_json(json.loads(self.store.get(key)), key)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
                err = f"does not parse ({e})"
            except ObjectNotFound:
                err = "vanished"
            copy = copies.get(vk)
            if copy is not None and record is not None and _unverified(record) != copy:
                err = "differs from the copy in its band's catalog"
            if err:
                where = f"version record {version_key(*vk)}"
                if copy is not None:
                    self.report.notes.append(f"{where} {err}: using the band catalog's copy")
                    self.report.repairs.append(f"rewrite {version_key(*vk)}")
                    out[vk] = copy
                else:
                    self.report.problems.append(f"{where} {err}, and no band catalog has a copy")
                continue
            assert record is not None
            out[vk] = record
        return out

    def content(self, versions: dict[VersionKey, VersionInfo]) -> IndexContent:
        content = IndexContent()
        content.versions = dict(versions)
        for band, cat in self.catalogs.items():
            content.bands[band] = cat.info
            for sha, offset, size in cat.blobs:
                content.blobs.setdefault(BlobId(sha), BlobRef(band, offset, size))
            content.trees.update(cat.trees)
        return content

    def lost_blobs(self, content: IndexContent, indexed: IndexContent | None,
                   versions: Iterable[VersionKey]) -> dict[BlobId, LostBlob]:
        """The blobs `versions` name that no readable band holds, each with the band a
        surviving record (a damaged band's catalog, a missing band's sidecar, the index
        objects) says held it, and why: "missing" when that band object is gone,
        "damaged" when it is there but its bytes do not verify. A blob such a record
        places in a band that is there is first read from it (a member whose tar header
        was in a damaged frame, while its content is intact): when its bytes verify, it
        goes into `content`'s blob map instead."""
        gaps = content_gaps(content)
        wanted = {blob for vk in versions for blob in gaps[vk][1]}
        if not wanted:
            return {}
        said: dict[BlobId, BlobRef] = {}
        for band, cat in [*self.catalogs.items(), *self.orphans().items()]:
            for sha, offset, size in [*cat.lost, *cat.blobs]:
                said.setdefault(BlobId(sha), BlobRef(band, offset, size))
        if indexed is not None:
            for blob, ref in indexed.blobs.items():
                said.setdefault(blob, ref)
        damaged = any(c.damage for c in self.catalogs.values())
        now = time.time_ns()
        out: dict[BlobId, LostBlob] = {}
        for blob in sorted(wanted):
            place = said.get(blob)
            if place is not None and self._read_back(blob, place):
                content.blobs[blob] = place
                continue
            holder = place.band if place is not None else ""
            if holder:
                why = "damaged" if holder in self.listing.bands else "missing"
            else:
                why = "damaged" if damaged else "missing"
            out[blob] = LostBlob(holder, why, now)
        return out

    def _read_back(self, blob: BlobId, ref: BlobRef) -> bool:
        """Whether `blob` can be read from where `ref` says, its SHA-256 verified."""
        cat = self.catalogs.get(ref.band)
        if cat is None or not cat.info.frames:
            return False
        key = band_key(ref.band)
        reader = bandfmt.BandReader(lambda s, n: self.store.get_range(key, s, n), cat.info.size,
                                    _frames(cat.info.frames), label=ref.band)
        try:
            reader.read_blob(bandfmt.BlobLocation(blob, ref.offset, ref.size))
        except (CorruptionError, ObjectNotFound, ObjectArchived):
            return False
        return True


def _sidecar_blobs(doc: dict[str, Any]) -> list[tuple[bytes, int, int]]:
    return [(bytes.fromhex(b["sha256"]), int(b["offset"]), int(b["size"])) for b in doc["blobs"]]


def _catalog_parts(doc: dict[str, Any], band: BandId) -> tuple[dict[TreeId, bytes],
                                                              VersionInfo | None]:
    parse_band_id(doc.get("band"), f"the catalog of band {band}")
    if doc.get("band") != band:
        raise CorruptionError(f"catalog names band {doc.get('band')!r}, not {band}")
    trees: dict[TreeId, bytes] = {}
    for tid_hex, text in (doc.get("trees") or {}).items():
        enc = text.encode("utf-8", "surrogateescape")
        tid = TreeId(bytes.fromhex(tid_hex))
        if tree_id(enc) != tid:
            raise CorruptionError(f"tree {tid_hex[:16]} in the catalog does not hash to its id")
        trees[tid] = enc
    version = (VersionInfo.from_json(doc["version"], f"the catalog of band {band}")
               if doc.get("version") else None)
    return trees, version


def _band_info(band: BandId, obj: ObjectInfo | None, size: int, sha256: bytes,
               frames: tuple[tuple[int, int], ...], doc: dict[str, Any], blobs: int) -> BandInfo:
    if obj is not None and obj.size != size:
        raise CorruptionError(f"band {band} is {obj.size} bytes on the store, its catalog "
                              f"says {size}")
    return BandInfo(
        band=band, state=band_state(obj) if obj is not None else "standard", size=size,
        sha256=sha256, uncompressed_size=sum(u for _, u in frames), frames=frames,
        storage_class=obj.storage_class if obj is not None else "STANDARD",
        collection=str(doc.get("collection", "")), blobs=blobs, created_ns=_band_time(band),
    )


def _band_time(band: str) -> int:
    try:
        dt = datetime.strptime(band.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return 0
    return int(dt.timestamp()) * 10**9


def _from_sidecar(store: ObjectStore, band: BandId, obj: ObjectInfo | None) -> BandCatalog:
    doc = bandfmt.decode_sidecar(store.get(sidecar_key(band)))
    frames = tuple((f.compressed_size, f.uncompressed_size) for f in bandfmt.sidecar_frames(doc))
    blobs = _sidecar_blobs(doc)
    trees, version = _catalog_parts(doc, band)
    info = _band_info(band, obj, int(doc["band_size"]), bytes.fromhex(doc["band_sha256"]),
                      frames, doc, len(blobs))
    return BandCatalog(info, blobs, trees, version, "sidecar", doc)


def _from_tail(store: ObjectStore, band: BandId, obj: ObjectInfo) -> BandCatalog:
    key = band_key(band)
    reader = bandfmt.BandReader(lambda s, n: store.get_range(key, s, n), obj.size, label=band)
    doc = reader.catalog
    blobs = [(loc.sha256, loc.offset, loc.size) for _, loc in reader.blobs()]
    trees, version = _catalog_parts(doc, band)
    frames = tuple((f.compressed_size, f.uncompressed_size) for f in reader.frames)
    # The band's whole SHA-256 is not in its own catalog; a scan or `check --read-data` has it.
    info = _band_info(band, obj, obj.size, b"", frames, doc, len(blobs))
    return BandCatalog(info, blobs, trees, version, "tail", dict(doc))


def _from_scan(store: ObjectStore, band: BandId, obj: ObjectInfo, work_dir: Path) -> BandCatalog:
    """Read the whole band: re-hash every member of its tar stream; the last is the catalog."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = band_file(work_dir, band, ".scan")
    try:
        store.get_to_file(band_key(band), path)
        scanned = scan_band_file(path, band, salvage=True)
    finally:
        path.unlink(missing_ok=True)
    if not scanned.frames:
        raise CorruptionError(f"band {band}: no part of it can be read ("
                              + "; ".join(scanned.damage) + ")")
    doc = scanned.catalog or {}
    trees, version = _catalog_parts(doc, band) if scanned.catalog else (scanned.trees, None)
    # A damaged band's SHA-256 is not recorded: it would vouch for the damage.
    info = _band_info(band, obj, scanned.size, b"" if scanned.damage else scanned.sha256,
                      scanned.frames, doc, len(scanned.blobs))
    return BandCatalog(info, scanned.blobs, trees, version, "scan", scanned.catalog,
                       scanned.damage, scanned.lost)


@dataclass(slots=True)
class ScannedBand:
    size: int
    sha256: bytes
    frames: tuple[tuple[int, int], ...]
    blobs: list[tuple[bytes, int, int]]  # re-hashed members: (sha256, offset, size)
    catalog: dict[str, Any] | None
    problems: list[str]
    damage: list[str] = field(default_factory=list)  # what of the band is damaged
    lost: list[tuple[bytes, int, int]] = field(default_factory=list)  # listed, not recovered
    trees: dict[TreeId, bytes] = field(default_factory=dict)  # from a damaged catalog


def scan_band_file(path: Path, band: str, *, salvage: bool = False) -> ScannedBand:
    """Read a band file front to back: its SHA-256, its frames, every tar member
    re-hashed, and the catalog (the last member), which must agree with the members.

    Without `salvage`: CorruptionError when any frame is damaged or a member the catalog
    lists is not there with its SHA-256 (`check --read-data`). With it, what can be read
    is returned: members before and after a damaged frame (the walk resynchronises at the
    next frame and the next valid tar header), `damage` saying what was wrong and `lost`
    the members the catalog lists that could not be re-hashed. A member is kept only when
    its bytes hash to what the catalog says for it (or, without a catalog, the hash is
    its blob id: content-addressed). CorruptionError only when nothing of the band makes
    sense (a catalog naming members that are not in the band)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
        size = f.tell()
        if size == 0:
            raise CorruptionError(f"band {band}: the band object is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            found, damage = bandfmt.salvage_frames(mm)
            members = list(bandfmt.salvage_members(mm, found, damage))
            # The catalog is the last zstd frame (what follows may be a broken seek table).
            last = next((fr for fr in reversed(found)
                         if mm[fr.compressed_offset:fr.compressed_offset + 4] == bandfmt.ZSTD_MAGIC),
                        None)
            tail = bytes(mm[last.compressed_offset:last.compressed_offset + last.compressed_size]
                         ) if last is not None and salvage else b""
    blobs: list[tuple[bytes, int, int]] = []
    catalog: dict[str, Any] | None = None
    problems: list[str] = []
    broken = 0
    for m in members:
        if m.name == bandfmt.CATALOG_MEMBER.encode():
            if m.content is None:
                continue
            try:
                catalog = json.loads(m.content)
            except ValueError as e:
                problems.append(f"catalog member does not parse: {e}")
            continue
        if m.sha256 is None:
            broken += 1
        else:
            blobs.append((m.sha256, m.offset, m.size))
    if broken:
        damage.append(f"{broken} member(s) overlap the damage")
    trees: dict[TreeId, bytes] = {}
    if catalog is None and damage:
        trees = _salvage_trees(bandfmt.salvage_frame_prefix(tail)) if tail else {}
        damage.append("its catalog is lost" + (f" (but {len(trees)} directory listing(s) in it "
                                               "verify)" if trees else ""))
    lost: list[tuple[bytes, int, int]] = []
    if catalog is not None:
        try:
            listed = {(bytes.fromhex(b["sha256"]), int(b["offset"]), int(b["size"]))
                      for b in catalog.get("blobs", [])}
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptionError(f"band {band}: its catalog is malformed: {e}") from e
        stray = set(blobs) - listed
        if stray and not damage:
            problems.append("catalog disagrees with the re-hashed members")
            raise CorruptionError(f"band {band}: its catalog disagrees with its members")
        if stray:  # members whose bytes do not hash to what the catalog says: damaged
            damage.append(f"{len(stray)} member(s) fail their SHA-256")
            blobs = [b for b in blobs if b not in stray]
        lost = sorted(listed - set(blobs), key=lambda b: b[1])
        if lost and not damage:
            damage.append(f"{len(lost)} member(s) of its catalog are not in it")
    if damage and not salvage:
        raise CorruptionError(f"band {band}: damaged: " + "; ".join(damage))
    frames = _readable_frames(found, size)
    return ScannedBand(size, h.digest(), frames, blobs, catalog, problems, damage, lost, trees)


_TREE_JSON = re.compile(rb'"([0-9a-f]{64})":"((?:[^"\\]|\\.)*)"')


def _salvage_trees(text: bytes) -> dict[TreeId, bytes]:
    """The directory listings found in what is left of a damaged catalog: every
    ``"<tree id>":"<encoding>"`` pair whose encoding hashes to its id (nothing else of
    such a catalog is trusted: a tree proves itself, a version copy would not)."""
    out: dict[TreeId, bytes] = {}
    for m in _TREE_JSON.finditer(text):
        try:
            enc = json.loads(b'"' + m.group(2) + b'"').encode("utf-8", "surrogateescape")
        except (ValueError, UnicodeError):
            continue
        tid = TreeId(bytes.fromhex(m.group(1).decode()))
        if tree_id(enc) == tid:
            out[tid] = enc
    return out


def _readable_frames(found: tuple[bandfmt.Frame, ...], size: int) -> tuple[tuple[int, int], ...]:
    """The (compressed, uncompressed) sizes of a band's frames as `BandInfo.frames`, from
    what a scan found. When the tail or a frame's structure is broken, the frames whose
    place in the stream is known are kept and one last frame (read as the catalog; it
    fails to decompress) spans the rest up to a seek table of the right length, so the
    band's size checks out and the recovered blobs can be read by range as usual."""
    known: list[tuple[int, int]] = []
    for fr in found:
        if fr.uncompressed_size < 0:
            break
        known.append((fr.compressed_size, fr.uncompressed_size))
    if sum(c for c, _ in known) + 17 + 8 * len(known) == size:
        return tuple(known)
    while known:
        rest = size - sum(c for c, _ in known) - 17 - 8 * (len(known) + 1)
        if rest > 0:
            return (*known, (rest, 0))
        known.pop()
    return ()


def _frames(sizes: tuple[tuple[int, int], ...]) -> tuple[bandfmt.Frame, ...]:
    out, coff, uoff = [], 0, 0
    for c, u in sizes:
        out.append(bandfmt.Frame(coff, c, uoff, u))
        coff, uoff = coff + c, uoff + u
    return tuple(out)


def check_content(content: IndexContent) -> dict[VersionKey, list[str]]:
    """For each version: what it lacks in `content` (trees, blob map, bands); empty = whole."""
    return {vk: [f"tree {t.hex()[:16]}" for t in trees] + [f"blob {b.hex()[:16]}" for b in blobs]
            for vk, (trees, blobs) in content_gaps(content).items()}


def content_gaps(content: IndexContent) -> dict[VersionKey, tuple[list[TreeId], list[BlobId]]]:
    """For each version: the trees it lacks in `content` (without them it cannot be
    listed at all) and the file blobs the blob map lacks (those files' bytes)."""
    out: dict[VersionKey, tuple[list[TreeId], list[BlobId]]] = {}
    done: dict[TreeId, tuple[list[TreeId], list[BlobId]]] = {}

    def visit(tid: TreeId) -> tuple[list[TreeId], list[BlobId]]:
        if tid in done:
            return done[tid]
        done[tid] = ([], [])
        raw = content.trees.get(tid)
        if raw is None:
            done[tid] = ([tid], [])
            return done[tid]
        trees: list[TreeId] = []
        blobs: list[BlobId] = []
        for e in decode_tree(raw):
            if e.kind == "dir" and e.tree is not None:
                sub = visit(e.tree)
                trees += sub[0]
                blobs += sub[1]
            elif e.kind == "file" and e.blob is not None and e.hardlink is None:
                ref = content.blobs.get(e.blob)
                if ref is None or ref.band not in content.bands:
                    blobs.append(e.blob)
        done[tid] = (trees, blobs)
        return done[tid]

    for vk, v in content.versions.items():
        trees, blobs = visit(v.root)
        out[vk] = (trees, list(dict.fromkeys(blobs)))
    return out


def lost_paths(content: IndexContent, root: TreeId, lost: dict[BlobId, LostBlob]) -> list[str]:
    """Display paths of the files under `root` whose blob is in `lost`."""
    out: list[str] = []
    stack: list[tuple[TreeId, bytes]] = [(root, b"")]
    while stack:
        tid, prefix = stack.pop()
        raw = content.trees.get(tid)
        if raw is None:
            continue
        for e in decode_tree(raw):
            path = prefix + b"/" + e.name if prefix else e.name
            if e.kind == "dir" and e.tree is not None:
                stack.append((e.tree, path))
            elif e.kind == "file" and e.blob is not None and e.blob in lost:
                out.append(display_path(path))
    return sorted(out)


# ---- rebuild --------------------------------------------------------------------------------


def rebuild(config: Config, store: ObjectStore, *, start: str | None = None,
            confirm: Confirm = lambda plan: False) -> RebuildReport:
    """Rebuild ``<state_dir>/catalog.lmdb`` (see the module docstring). `start` forces a
    rung (index, sidecars, tails, scan); None walks the ladder from rung 1. The old LMDB
    is kept as ``catalog.lmdb.before-rebuild`` when it is replaced. Takes the vault lock
    (LockedError while a snapshot runs)."""
    if start is not None and start not in RUNGS[1:]:
        raise VaultError(f"--from {start}: expected one of {', '.join(RUNGS[1:])}")
    state = config.state_dir
    for d in (state, state / "spool", state / "cache"):
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StoreSetupError(f"cannot create the state directory {d}: {e.strerror}") from None
    try:
        vault_id = str(json.loads(store.get(VAULT_KEY))["vault_id"])
    except ObjectNotFound:
        raise StoreSetupError(f"{config.store} holds no vault (no {VAULT_KEY}): "
                              "check [vault].store") from None
    except (ValueError, KeyError, TypeError):
        raise CorruptionError(f"{config.store}/{VAULT_KEY} is unreadable") from None
    live = state / "catalog.lmdb"
    new = state / "catalog.lmdb.new"
    shutil.rmtree(new, ignore_errors=True)
    catalog = Catalog(new)
    vault = Vault(config, store, catalog)
    try:
        with vault.lock():
            listing = StoreListing.read(store)
            report = RebuildReport(rung="", problems=list(listing.damaged))
            ladder = _Ladder(store, listing, state / "spool", confirm, report,
                             config.s3.restore_days, config.s3.restore_tier)
            _rebuild_locked(vault, ladder, live, vault_id, start)
            catalog.close()
            if report.rung != "lmdb":
                old = state / "catalog.lmdb.before-rebuild"
                if live.exists() and _truncated(live):  # with --from, rung 1 did not look
                    report.notes.append(f"the damaged local catalog is kept as "
                                        f"{_set_aside_damaged(live)}")
                if live.exists():
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(live, old)
                os.replace(new, live)
            done = Vault(config, store, Catalog(live))
            try:
                if report.rung == "lmdb":  # lost files recorded before: still lost
                    _report_recorded_lost(done, report)
                _adopt(done, ladder, listing)
                _repair(done, report, listing)
            finally:
                done.close()
            return report
    finally:
        catalog.close()
        shutil.rmtree(new, ignore_errors=True)


def _truncated(live: Path) -> bool:
    try:
        check_data_file(live)
    except CorruptionError:
        return True
    return False


def _rebuild_locked(vault: Vault, ladder: _Ladder, live: Path, vault_id: str,
                    start: str | None) -> None:
    store, listing, report = vault.store, ladder.listing, ladder.report
    committed = listing.committed()
    rungs = RUNGS if start is None else RUNGS[RUNGS.index(start):]
    if start is not None:
        report.why.append(f"rungs above {start} not tried: --from {start}")
    for rung in rungs:
        if rung == "lmdb":
            why = _verify_live(live, vault_id, vault.config.store)
            if why is None:
                report.rung = "lmdb"
                return
            report.why.append(f"rung 1 (local catalog) not used: {why}")
            continue
        if rung == "index":
            loaded = load_index(store, vault_id, listing.forgotten)
            if not loaded.objects and not loaded.problems:
                report.why.append("rung 2 (consolidated index) not used: the store holds no "
                                  "index objects" + (" that verify: " + "; ".join(loaded.skipped)
                                                     if loaded.skipped else ""))
                continue
            if loaded.problems:
                report.why.append("rung 2 (consolidated index) not used: "
                                  + "; ".join(loaded.problems))
                continue
            report.notes += [f"passed over {s}" for s in loaded.skipped]
            content = loaded.content
            indexed = IndexContent(versions=dict(content.versions), bands=dict(content.bands))
            content.versions = {vk: v for vk, v in content.versions.items() if vk in committed}
            extra_bands = set(listing.bands) - set(content.bands)
            extra_versions = committed - set(content.versions)
            if extra_bands or extra_versions:
                ladder.recover_bands(extra_bands, "sidecars")
                more = ladder.versions(extra_versions)
                top = ladder.content(more)
                content.versions.update(more)
                content.trees.update(top.trees)
                now = time.time_ns()  # registered now: the next publish indexes them
                for band, info in top.bands.items():
                    content.bands[band] = BandInfo.from_json({**info.to_json(), "created_ns": now})
                for blob, ref in top.blobs.items():
                    content.blobs.setdefault(blob, ref)
                report.notes.append(
                    f"index objects up to generation {loaded.latest_generation}, plus "
                    f"{len(more)} newer version(s) and {len(extra_bands)} newer band(s) "
                    "from their sidecars")
            _refresh_band_states(content, listing)
            lacking = sorted(vk for vk, lacks in check_content(content).items() if lacks)
            if lacking:
                report.why.append("rung 2 (consolidated index) not used: incomplete for "
                                  + ", ".join(f"{c}@v{n}" for c, n in lacking))
                continue
            report.rung = "index"
            report.bands = {b: "index" for b in content.bands}
            _install(vault, content, vault_id, report, indexed, loaded.latest_generation)
            return
        # Rungs 3-5: every band's catalog, each band falling further on its own.
        ladder.recover_bands(listing.bands, rung)
        content = ladder.content(ladder.versions(committed))
        loaded = load_index(store, vault_id, listing.forgotten)
        # Trees are content-addressed (each checked against its id): any surviving copy
        # serves, from the sidecar of a band that is gone or from the index objects.
        for cat in ladder.orphans().values():
            for tid, enc in cat.trees.items():
                content.trees.setdefault(tid, enc)
        for tid, enc in loaded.content.trees.items():
            content.trees.setdefault(tid, enc)
        for vk, (trees, _) in sorted(content_gaps(content).items()):
            if trees:
                report.problems.append(
                    f"{vk[0]}@v{vk[1]} cannot be recovered: its directory listings are gone "
                    f"(tree {', tree '.join(t.hex()[:16] for t in trees[:5])}"
                    + (f" and {len(trees) - 5} more" if len(trees) > 5 else "") + ")")
                content.versions.pop(vk)
        lost = ladder.lost_blobs(content, loaded.content, content.versions)
        _report_lost(report, content, lost, ladder)
        report.rung = rung
        report.bands = {b: c.source for b, c in ladder.catalogs.items()}
        base = None if loaded.problems or loaded.skipped else loaded.content
        if base is not None:
            now = time.time_ns()  # bands the index lacks: the next publish indexes them
            for band, info in content.bands.items():
                if band not in base.bands:
                    content.bands[band] = BandInfo.from_json({**info.to_json(), "created_ns": now})
        _install(vault, content, vault_id, report, base, loaded.latest_generation, lost)
        return
    raise VaultError("no rung of the ladder could rebuild the catalog")  # pragma: no cover


def _report_recorded_lost(vault: Vault, report: RebuildReport) -> None:
    """Put the lost blobs a verified local catalog records, and their files, in the report."""
    lost = vault.catalog.lost_blobs()
    if not lost:
        return
    memo: dict[TreeId, list[tuple[bytes, BlobId]]] = {}
    for c in vault.catalog.collections():
        for v in vault.catalog.versions(c):
            files = vault.lost_files(v.root, lost, memo)
            if files:
                report.lost_files[f"{c}@v{v.number}"] = [display_path(p) for p, _ in files]
                report.lost.update((blob, lost[blob]) for _, blob in files)


def _report_lost(report: RebuildReport, content: IndexContent, lost: dict[BlobId, LostBlob],
                 ladder: _Ladder) -> None:
    """Put the lost blobs, the files they leave without bytes and the damaged bands into
    the report."""
    report.lost = lost
    for band, cat in sorted(ladder.catalogs.items()):
        if cat.damage:
            report.damaged_bands[band] = list(cat.damage)
            report.notes.append(f"band {band} is damaged ({'; '.join(cat.damage)}): "
                                f"{len(cat.blobs)} member(s) recovered by the scan")
    if not lost:
        return
    for (c, n), v in sorted(content.versions.items()):
        paths = lost_paths(content, v.root, lost)
        if paths:
            report.lost_files[f"{c}@v{n}"] = paths
    missing = sorted({lb.band for lb in lost.values() if lb.why == "missing" and lb.band})
    for name in missing:
        report.notes.append(f"band {name} is missing from the store")


def _verify_live(live: Path, vault_id: str, store_url: str) -> str | None:
    """Why the live LMDB cannot be used (None: it verifies). A damaged one (truncated, or
    a record failing its checksum) is moved aside, never deleted: `_set_aside_damaged`."""
    if not (live / "data.mdb").exists():
        return "there is none"
    try:
        catalog = Catalog(live, readonly=True)
    except CorruptionError as e:
        return _damaged_why(e, live)
    except VaultError as e:
        return e.message
    try:
        if catalog.meta("vault_id") != vault_id or catalog.meta("store") != store_url:
            return "it belongs to another vault or store"
        walk = verify_catalog(catalog)
        if walk.problems:
            return walk.problems[0] + (f" (and {len(walk.problems) - 1} more problem(s))"
                                       if len(walk.problems) > 1 else "")
        return None
    except CorruptionError as e:
        damage = e
    finally:
        catalog.close()
    return _damaged_why(damage, live)


def _damaged_why(e: CorruptionError, live: Path) -> str:
    aside = _set_aside_damaged(live)
    return f"{e.message.removesuffix(': run `vaultfs index rebuild`')}; kept as {aside}"


def _set_aside_damaged(live: Path) -> Path:
    """Rename a damaged LMDB directory to ``catalog.lmdb.damaged-<UTC time>`` (kept for
    inspection; nothing deletes it) so the rebuild never maps it again."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = live.with_name(f"{live.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = live.with_name(f"{live.name}.damaged-{stamp}-{n}")
    os.replace(live, aside)
    return aside


def _refresh_band_states(content: IndexContent, listing: StoreListing) -> None:
    """Bring index content up to the store: storage classes may have changed since the
    index was written (archiving), and bands may be gone (`prune` deletes them; the index
    objects written before still list them). A gone band and its blob entries are
    dropped, so no rebuilt catalog offers content that no longer exists."""
    gone = {band for band in content.bands if band not in listing.bands}
    if gone:
        for band in gone:
            del content.bands[band]
        content.blobs = {b: ref for b, ref in content.blobs.items() if ref.band not in gone}
    for band, info in list(content.bands.items()):
        obj = listing.bands.get(band)
        if obj is not None and obj.storage_class != info.storage_class:
            content.bands[band] = BandInfo.from_json(
                {**info.to_json(), "storage_class": obj.storage_class, "state": band_state(obj)})


def _install(vault: Vault, content: IndexContent, vault_id: str, report: RebuildReport,
             indexed: IndexContent | None, generation: int,
             lost: dict[BlobId, LostBlob] | None = None) -> None:
    """Write `content` into the (new, empty) catalog of `vault`. `indexed`: what of it the
    consolidated index already holds (None: the index must be rewritten in full). `lost`:
    blobs the versions name whose bytes are nowhere (their files read as lost; a snapshot
    that finds the same content again stores it and heals them)."""
    state = _IndexState(generation=generation, needs_full=indexed is None)
    if indexed is not None:
        for c, n in indexed.versions:
            state.versions[c] = max(state.versions.get(c, 0), n)
        state.bands_ns = max([0, *(b.created_ns for b in indexed.bands.values())])
    with vault.catalog.writer() as w:
        w.set_meta("vault_id", vault_id)
        w.set_meta("store", vault.config.store)
        for tid, enc in content.trees.items():
            w.put_tree(tid, enc)
        for info in content.bands.values():
            w.put_band(info)
        for blob, ref in content.blobs.items():
            w.put_blob(blob, ref)
        for blob, why in (lost or {}).items():
            w.mark_lost(blob, why)
        for _, v in sorted(content.versions.items()):
            w.put_version(v)
        state.write(w)
    report.versions = [f"{c}@v{n}" for c, n in sorted(content.versions)]


def adopt_committed(vault: Vault, collection: str) -> list[str]:
    """Register versions of `collection` committed on the store but missing locally (a
    snapshot killed after its commit point, or another machine's), with the bands and blobs
    they need; the caller holds the vault lock. Costs one HEAD when there are none.
    Returns notes and problems for the log."""
    latest = vault.catalog.latest_version(collection)
    try:
        vault.store.head(version_key(collection, (latest.number if latest else 0) + 1))
    except ObjectNotFound:
        return []
    listing = StoreListing.read(vault.store)
    report = RebuildReport(rung="lmdb")
    cfg = vault.config.s3
    ladder = _Ladder(vault.store, listing, vault.spool_dir, lambda plan: False, report,
                     cfg.restore_days, cfg.restore_tier)
    _adopt(vault, ladder, listing)
    for p in report.problems:
        log.warning("%s", p)
    return report.notes + report.problems


def _adopt(vault: Vault, ladder: _Ladder, listing: StoreListing) -> None:
    """Register versions committed on the store (by a killed run, or another machine) that
    the catalog lacks, with their trees and the bands and blobs they need."""
    catalog, report = vault.catalog, ladder.report
    have = {(c, v.number) for c in catalog.collections() for v in catalog.versions(c)}
    missing = listing.committed() - have
    if not missing:
        return
    known = {b.band for b in catalog.bands()}
    need = set(listing.bands) - known
    for vk in missing:  # their last band's catalog carries their trees
        try:
            key = listing.records[vk]
            record = VersionInfo.from_json(json.loads(ladder.store.get(key)), key)
            need |= {b for b in record.bands if b in listing.bands}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, ObjectNotFound):
            need |= {b for b in listing.bands if b in known}  # find its copy the hard way
    ladder.recover_bands(need - set(ladder.catalogs), "sidecars")
    content = ladder.content(ladder.versions(missing))
    now = time.time_ns()
    with catalog.writer() as w:
        for tid, enc in content.trees.items():
            w.put_tree(tid, enc)
        for band, info in content.bands.items():
            if band not in known:
                w.put_band(BandInfo.from_json({**info.to_json(), "created_ns": now}))
                for blob, ref in content.blobs.items():
                    if ref.band == band and catalog.blob(blob) is None:
                        w.put_blob(blob, ref)
    for vk, v in sorted(content.versions.items()):
        walk_lacks = _lacks_in_catalog(catalog, v.root)
        if walk_lacks:
            report.problems.append(f"{vk[0]}@v{vk[1]} (committed on the store) cannot be "
                                   f"adopted: it lacks {', '.join(walk_lacks[:5])}")
            continue
        with catalog.writer() as w:
            w.put_version(v)
        report.notes.append(f"adopted {vk[0]}@v{vk[1]}, committed on the store but missing "
                            "locally")
        report.versions.append(f"{vk[0]}@v{vk[1]}")


def _lacks_in_catalog(catalog: Catalog, root: TreeId) -> list[str]:
    lacks: list[str] = []
    stack, seen = [root], set()
    while stack:
        tid = stack.pop()
        if tid in seen:
            continue
        seen.add(tid)
        raw = catalog.tree_bytes(tid)
        if raw is None:
            lacks.append(f"tree {tid.hex()[:16]}")
            continue
        for e in decode_tree(raw):
            if e.kind == "dir" and e.tree is not None:
                stack.append(e.tree)
            elif e.kind == "file" and e.blob is not None and e.hardlink is None \
                    and catalog.blob(e.blob) is None:
                lacks.append(f"blob {e.blob.hex()[:16]}")
    return lacks


def _repair(vault: Vault, report: RebuildReport, listing: StoreListing) -> None:
    """After a rebuild: rewrite damaged version records and sidecars from verified copies,
    and bring the consolidated index up to date (in full when its chain is damaged)."""
    store, catalog = vault.store, vault.catalog
    for c in catalog.collections():
        for v in catalog.versions(c):
            if (c, v.number) in listing.forgotten:
                continue
            key = version_key(c, v.number)
            try:
                current = VersionInfo.from_json(json.loads(store.get(key)))
                ok = _unverified(current) == _unverified(v)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, ObjectNotFound):
                ok = False
            if not ok:
                store.put(key, json.dumps(_unverified(v).to_json(), indent=1,
                                          sort_keys=True).encode())
                report.repairs.append(f"rewrote {key} from the verified copy")
    for info in list(catalog.bands()):
        try:
            bandfmt.decode_sidecar(store.get(sidecar_key(info.band)))
            continue
        except (CorruptionError, ObjectNotFound):
            pass
        if info.band in report.damaged_bands:  # a sidecar must describe an intact band
            report.notes.append(f"the sidecar of the damaged band {info.band} is not rewritten")
            continue
        try:
            data = _sidecar_from_band(vault, info)
        except (CorruptionError, ObjectNotFound, ObjectArchived) as e:
            # The catalog is whole; the band's own damage is for `check --read-data`.
            report.warnings.append(f"sidecar of band {info.band} is damaged and cannot be "
                                   f"rewritten now: {_message(e)} (`vaultfs check --read-data` "
                                   "tells what the damage affects)")
            continue
        store.put(sidecar_key(info.band), data)
        report.repairs.append(f"rewrote {sidecar_key(info.band)} from the band's own catalog")
    loaded = load_index(store, catalog.meta("vault_id") or "", listing.forgotten)
    have = {(c, v.number) for c in catalog.collections() for v in catalog.versions(c)}
    full = bool(loaded.problems or loaded.skipped or not have <= set(loaded.content.versions))
    for p in _publish(vault, full=full):
        report.repairs.append(f"wrote {p.key} ({p.versions} version(s), {p.bands} band(s), "
                              f"{p.trees} tree(s))")


def _sidecar_from_band(vault: Vault, info: BandInfo) -> bytes:
    """Sidecar bytes rebuilt from the band itself (read whole when its SHA-256 is unknown;
    the catalog then records it)."""
    store = vault.store
    if info.sha256:
        key = band_key(info.band)
        reader = bandfmt.BandReader(lambda s, n: store.get_range(key, s, n), info.size,
                                    label=info.band)
        return sidecar_bytes(reader.catalog_bytes, info)
    path = band_file(vault.spool_dir, info.band, ".scan")
    try:
        store.get_to_file(band_key(info.band), path)
        scanned = scan_band_file(path, info.band)
        fd = os.open(path, os.O_RDONLY)
        try:
            catalog_bytes = bandfmt.BandReader(lambda s, n: os.pread(fd, n, s), scanned.size,
                                               label=info.band).catalog_bytes
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    fixed = BandInfo.from_json({**info.to_json(), "sha256": scanned.sha256.hex()})
    with vault.catalog.writer() as w:
        w.put_band(fixed)
    return sidecar_bytes(catalog_bytes, fixed)


def sidecar_bytes(catalog_bytes: bytes, info: BandInfo) -> bytes:
    """A sidecar as `band.encode_sidecar` writes it, from a band's catalog and BandInfo."""
    doc = json.loads(catalog_bytes)
    doc.update(band_size=info.size, band_sha256=info.sha256.hex(),
               frames=[[c, u] for c, u in info.frames])
    text = json.dumps(doc, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return zstandard.ZstdCompressor(level=3, write_checksum=True,
                                    write_content_size=True).compress(text.encode("ascii"))
