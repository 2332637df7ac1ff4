"""Index objects on the store: their keys and bytes, what they hold, and loading them.

The store keeps a copy of the vault's index under ``index/`` so that losing the
NAS (or its LMDB) never costs a backup. It is written incrementally (`publishing`):
each snapshot that commits something appends one small *delta* object; once
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
  ``tail -c +81 OBJ | zstd -dc`` shows the JSON with standard tools.

`superseded` names the objects no load needs any more (``prune`` deletes them).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import zstandard

from vaultfs.errors import CorruptionError, VaultError
from vaultfs.model import (
    BadRecord,
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    TreeId,
    VersionInfo,
    decode_record,
    parse_band_id,
    tree_id,
)
from vaultfs.store import ObjectNotFound, ObjectStore

INDEX_PREFIX = "index/"
INDEX_MAGIC = b"VAULTFS-INDEX1 "
INDEX_FORMAT = 1
_INDEX_KEY = re.compile(r"^index/(\d{12})-(delta|full)\.zst$")

VersionKey = tuple[str, int]


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
    if not data.startswith(INDEX_MAGIC) or data[head_len - 1 : head_len] != b"\n":
        raise CorruptionError(f"{key}: not an index object (bad header)")
    body = data[head_len:]
    if hashlib.sha256(body).hexdigest().encode() != data[len(INDEX_MAGIC) : head_len - 1]:
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


def load_index(store: ObjectStore, vault_id: str, forgotten: set[VersionKey] | None = None) -> LoadedIndex:
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
            candidate = _read_content(store, key, gen, vault_id, IndexContent())
        except (CorruptionError, ObjectNotFound, BadRecord) as e:
            skipped.append(error_text(e))
            continue
        content, base_gen, used = candidate, gen, [key]
        break
    deltas = [o for o in objects if o[1] == "delta" and o[0] > base_gen]
    problems: list[str] = []
    for gen, _, key in deltas:
        try:
            _read_content(store, key, gen, vault_id, content)
            used.append(key)
        except (CorruptionError, ObjectNotFound, BadRecord) as e:
            problems.append(error_text(e))
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


def _read_content(
    store: ObjectStore, key: str, gen: int, vault_id: str, content: IndexContent
) -> IndexContent:
    """Merge index object `key` into `content` (returned). CorruptionError when the object
    fails its checks; BadRecord ("<key>: malformed record: ...") when a record in it does
    not parse."""
    doc = _read_index_doc(store, key, gen, vault_id)
    try:
        decode_record(lambda d: content.merge_doc(d, key), doc, f"{key}: malformed record")
    except BadRecord as e:
        if isinstance(e.__cause__, CorruptionError):  # a bad band id: it names `key` itself
            raise e.__cause__ from None
        raise
    return content


def _read_index_doc(store: ObjectStore, key: str, gen: int, vault_id: str) -> dict[str, Any]:
    doc = decode_index_object(store.get(key), key)
    if doc.get("generation") != gen or doc.get("vault_id") != vault_id:
        raise CorruptionError(f"{key}: generation or vault id does not match its name")
    return doc


def error_text(e: Exception) -> str:
    return e.message if isinstance(e, VaultError) else str(e)


def unverified(v: VersionInfo) -> VersionInfo:
    """The version as committed (``verified_ns`` is local bookkeeping)."""
    return VersionInfo.from_json({**v.to_json(), "verified_ns": []})
