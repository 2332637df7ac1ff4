"""A vault: the store, the local catalog, and the bands between them.

`Vault` owns the objects in the store (``vault.json``, bands, sidecars,
version records) and keeps the local catalog in step with them. It knows how
to read a blob back (local spool/cache copy first, else ranged GETs on the
store) and verifies every byte it returns.

Concurrency: one process at a time may write (``lock()`` holds an flock on
``<state_dir>/lock``); readers need no lock. A small LRU of decompressed frames
is shared by the threads of one process.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vaultfs import band as bandfmt
from vaultfs.acceptance import ACCEPTED_PREFIX, Acceptance, parse_accepted_key
from vaultfs.catalog import Catalog
from vaultfs.config import Config
from vaultfs.errors import CorruptionError, LockedError, StoreSetupError, UsageError, VaultError
from vaultfs.model import (
    VAULT_KEY,
    BadRecord,
    BandId,
    BandInfo,
    BlobId,
    BlobRef,
    Entry,
    LostBlob,
    TreeId,
    VersionInfo,
    band_file,
    band_key,
    decode_record,
    decode_tree,
    sidecar_key,
    version_key,
)
from vaultfs.store import ObjectExists, ObjectNotFound, ObjectStore, ProgressCallback, open_store

VAULT_FORMAT = 1
READERS_KEPT = 4  # band readers kept open by read_blob/iter_blob (restores)
TIER_META = "tier:"  # catalog meta: the tier of a hub client's collection (docs/hub.md)


class Vault:
    """An opened vault. Use `Vault.open` (existing) or `Vault.create` (``vaultfs init``)."""

    def __init__(self, config: Config, store: ObjectStore, catalog: Catalog) -> None:
        self.config = config
        self.store = store
        self.catalog = catalog
        self.state_dir = config.state_dir
        self.spool_dir = config.state_dir / "spool"
        self.cache_dir = config.state_dir / "cache"
        self._readers: OrderedDict[BandId, bandfmt.BandReader] = OrderedDict()
        self._readers_lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------------

    @staticmethod
    def create(config: Config) -> tuple[Vault, bool]:
        """Create the store's ``vault.json`` and the local state; idempotent.

        Returns the vault and whether anything new was created.
        """
        store = open_store(config.store, config.s3, config.upload_limit, config.download_limit)
        store.check_access()
        # Everything the store can refuse is checked before anything is written locally:
        # a refused init leaves no half-made state directory behind.
        lmdb_dir = config.state_dir / "catalog.lmdb"
        catalog = Catalog(lmdb_dir) if (lmdb_dir / "data.mdb").exists() else None
        local_id = catalog.meta("vault_id") if catalog else None
        try:
            return Vault._create(config, store, catalog, local_id)
        except BaseException:
            if catalog:
                catalog.close()
            raise

    @staticmethod
    def _create(
        config: Config, store: ObjectStore, catalog: Catalog | None, local_id: str | None
    ) -> tuple[Vault, bool]:
        remote, created = _vault_description(store, config, local_id)
        vault_id = str(remote.get("vault_id", ""))
        if remote.get("format") != VAULT_FORMAT or not vault_id:
            raise StoreSetupError(
                f"{config.store} holds a vault of an unknown format ({remote.get('format')!r}): "
                "upgrade vaultfs"
            )
        if local_id is not None and local_id != vault_id:
            raise StoreSetupError(
                f"{config.store} holds a different vault ({vault_id}) than the state directory "
                f"{config.state_dir} ({local_id}): point the config at the right store, "
                "or use an empty state_dir"
            )
        if local_id is None and not created and any(True for _ in store.list("versions/")):
            # A store holding versions of a vault this NAS has never seen: its catalog
            # comes from the store (`index rebuild`), not from an empty one made here.
            raise StoreSetupError(
                f"{config.store} already holds vault {vault_id} with versions: "
                "to use it on this machine run `vaultfs index rebuild`"
            )
        _prepare_state_dir(config.state_dir)
        catalog = catalog or Catalog(config.state_dir / "catalog.lmdb")
        if local_id is None:
            with catalog.writer() as w:
                w.set_meta("vault_id", vault_id)
                w.set_meta("store", config.store)
            created = True
        return Vault(config, store, catalog), created

    @staticmethod
    def open(config: Config, *, readonly: bool = False, quick: bool = False) -> Vault:
        """Open an initialised vault; a clear error when ``vaultfs init`` has not run.
        ``quick``: a short command that mostly reads (see `open_store`)."""
        lmdb_dir = config.state_dir / "catalog.lmdb"
        if not (lmdb_dir / "data.mdb").exists():
            raise VaultError(
                f"no vault state in {config.state_dir}: run `vaultfs init` first "
                "(or `vaultfs index rebuild` to recover an existing vault)"
            )
        catalog = Catalog(lmdb_dir, readonly=readonly)
        if catalog.meta("store") is None:
            catalog.close()
            raise VaultError(
                f"the state directory {config.state_dir} holds no vault (an init that stopped "
                "part-way): run `vaultfs init` (or `vaultfs index rebuild` to recover an existing vault)"
            )
        if catalog.meta("store") != config.store:
            raise StoreSetupError(
                f"the state directory {config.state_dir} belongs to store "
                f"{catalog.meta('store')}, not {config.store}: fix [vault].store or state_dir"
            )
        store = open_store(config.store, config.s3, config.upload_limit, config.download_limit, quick=quick)
        return Vault(config, store, catalog)

    def close(self) -> None:
        self.catalog.close()

    @contextmanager
    def lock(self, wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Exclusive writer lock (one snapshot at a time on this NAS). Held by another
        process: LockedError, or with `wait`, `wait(holder)` is called (to say so) and the
        lock is waited for (a hub's second client waits for the first one's commit)."""
        path = self.state_dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                if wait is None:
                    raise LockedError(
                        f"another vaultfs process is writing to this vault ({holder}): wait for it to finish"
                    ) from None
                wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    # ---- versions and trees ------------------------------------------------------------

    def versions(self, collection: str) -> list[VersionInfo]:
        return self.catalog.versions(collection)

    def resolve_version(self, collection: str, number: int | None) -> VersionInfo:
        if number is None:
            version = self.catalog.latest_version(collection)
            if version is None:
                raise UsageError(f"collection {collection!r} has no versions yet: run `vaultfs snapshot`")
            return version
        version = self.catalog.version(collection, number)
        if version is None:
            raise UsageError(
                f"{collection}@v{number} does not exist: `vaultfs versions {collection}` lists them"
            )
        return version

    def check_collection(self, name: str) -> None:
        """ConfigError unless `name` is a collection of the config or one whose versions the
        catalog holds (a hub client's, ``laptop.home``: docs/hub.md)."""
        if name not in self.catalog.collections():
            self.config.collection(name)

    def tree(self, tree: TreeId) -> tuple[Entry, ...]:
        return self.catalog.tree(tree)

    # ---- bands -------------------------------------------------------------------------

    def upload_band(
        self,
        closed: bandfmt.ClosedBand,
        collection: str,
        progress: ProgressCallback | None = None,
        replaces: tuple[BandId, ...] = (),
    ) -> BandInfo:
        """Put a closed spool band and its sidecar on the store and register its blobs
        (`progress`: called with the band's bytes as they are sent; `replaces`: the bands a
        recompressed band replaces, its catalog's ``recompressed_from``).

        Blobs are registered before any version refers to them: a snapshot that
        dies later leaves bands whose content the next run reuses (resume).
        """
        storage_class = self.upload_class(collection)
        self.store.put_file(
            band_key(closed.band_id),
            closed.path,
            sha256=closed.sha256,
            progress=progress,
            storage_class=storage_class,
        )
        self.store.put(
            sidecar_key(closed.band_id),
            bandfmt.encode_sidecar(closed.catalog, closed.size, closed.sha256, closed.frames),
        )
        info = BandInfo(
            band=BandId(closed.band_id),
            state="standard",
            storage_class=storage_class,
            size=closed.size,
            sha256=closed.sha256,
            uncompressed_size=closed.uncompressed_size,
            frames=tuple((f.compressed_size, f.uncompressed_size) for f in closed.frames),
            collection=collection,
            blobs=len(closed.blobs),
            created_ns=time.time_ns(),
            levels=(min(closed.frame_levels), max(closed.frame_levels)) if closed.frame_levels else None,
            replaces=replaces,
        )
        with self.catalog.writer() as w:
            w.put_band(info)
            for loc in closed.blobs:
                w.put_blob(BlobId(loc.sha256), BlobRef(info.band, loc.offset, loc.size))
        return info

    def upload_class(self, collection: str) -> str:
        """The storage class a new band of `collection` is uploaded in: ``[s3].warm_class``
        for a warm collection on an s3:// store, else STANDARD (cold bands move to the
        archive class only after their upload is verified: `vaultfs.archive`)."""
        warm = self.collection_tier(collection) == "warm"
        return self.config.s3.warm_class if warm and self.config.store.startswith("s3://") else "STANDARD"

    def collection_tier(self, collection: str) -> str | None:
        """ "cold" or "warm": the config's, else (a hub client's collection, not in the config)
        what the hub recorded at its snapshots (`TIER_META`); None when nobody says."""
        for c in self.config.collections:
            if c.name == collection:
                return c.tier
        return self.catalog.meta(TIER_META + collection)

    def commit_version(self, version: VersionInfo) -> None:
        """Write the version record on the store: the commit point of a snapshot."""
        self._put_record_once(
            version_key(version.collection, version.number),
            version.to_json(),
            f"{version.collection}@v{version.number} already exists on the store: another "
            "machine snapshotted this collection at the same time; run `vaultfs index rebuild`",
        )

    def _put_record_once(self, key: str, record: dict[str, Any], exists: str) -> None:
        """Put a JSON record at `key` write-once (If-None-Match): records on the store are
        never overwritten, so one already there is a `VaultError` saying `exists` (what
        happened, what to do)."""
        try:
            self.store.put(key, json.dumps(record, indent=1, sort_keys=True).encode(), if_none_match=True)
        except ObjectExists:
            raise VaultError(exists) from None

    def _reader(self, band: BandId) -> bandfmt.BandReader:
        """A reader of the band, from a small LRU: a restore reads band after band,
        so a few readers (each with its frame cache) are enough, and memory stays
        bounded however many bands a version spans."""
        with self._readers_lock:
            reader = self._readers.get(band)
            if reader is not None:
                self._readers.move_to_end(band)
                return reader
        reader = self.band_reader(band)
        with self._readers_lock:
            self._readers[band] = reader
            while len(self._readers) > READERS_KEPT:
                self._readers.popitem(last=False)
        return reader

    def read_blob(self, blob: BlobId) -> bytes:
        """A blob's whole content, SHA-256 verified."""
        ref = self._ref(blob)
        return self._reader(ref.band).read_blob(bandfmt.BlobLocation(blob, ref.offset, ref.size))

    def iter_blob(self, blob: BlobId) -> Iterator[bytes]:
        """A blob's content in chunks (bounded memory); verified before the last chunk."""
        ref = self._ref(blob)
        return self._reader(ref.band).iter_blob(bandfmt.BlobLocation(blob, ref.offset, ref.size))

    def blob_order(self, blob: BlobId) -> tuple[str, int]:
        """Where a blob lies (band, offset), to read many in one pass per band; ("", 0)
        for one the catalog does not place."""
        ref = self.catalog.blob(blob)
        return (ref.band, ref.offset) if ref else ("", 0)

    def _ref(self, blob: BlobId) -> BlobRef:
        ref = self.catalog.blob(blob)
        if ref is None:
            lost = self.catalog.lost_blob(blob)
            if lost is not None:
                raise CorruptionError(lost_message(lost))
            raise CorruptionError(f"blob {blob.hex()[:16]} is not in the local catalog: run `vaultfs check`")
        return ref

    def lost_files(
        self,
        root: TreeId,
        lost: dict[BlobId, LostBlob],
        memo: dict[TreeId, list[tuple[bytes, BlobId]]] | None = None,
    ) -> list[tuple[bytes, BlobId]]:
        """(path, blob) of every file under `root` whose blob is in `lost` (the catalog's
        `lost_blobs`; callers skip this walk when it is empty). `memo`, shared across
        versions, makes the walk of unchanged directories free."""
        memo = {} if memo is None else memo

        def visit(tid: TreeId) -> list[tuple[bytes, BlobId]]:
            if tid in memo:
                return memo[tid]
            memo[tid] = []
            raw = self.catalog.tree_bytes(tid)
            out: list[tuple[bytes, BlobId]] = []
            for e in decode_tree(raw) if raw is not None else ():
                if e.kind == "dir" and e.tree is not None:
                    out += [(e.name + b"/" + p, b) for p, b in visit(e.tree)]
                elif e.kind == "file" and e.blob is not None and e.blob in lost:
                    out.append((e.name, e.blob))
            memo[tid] = out
            return out

        return sorted(visit(root))

    # ---- mount support -------------------------------------------------------------------

    def band_reader(
        self, band: BandId, *, cache_bytes: int = bandfmt.FRAME_CACHE_BYTES
    ) -> bandfmt.BandReader:
        """A new reader of one band, labelled with its id (errors name the band).

        Reads the local cache copy when it is complete, else ranged GETs on the
        store. The frame cache holds at least two of the band's largest frames, so
        streaming reads decompress each frame once. The caller owns the reader
        (the mount keeps a bounded LRU of them, and so does `_reader`).
        """
        info = self.catalog.band(band)
        if info is None:
            raise CorruptionError(f"band {band} is not in the local catalog: run `vaultfs check`")
        largest = max((u for _, u in info.frames), default=0)
        cache = max(cache_bytes, 2 * largest + 1)
        frames = bandfmt.frames_from_sizes(info.frames)
        local = self.cached_band_path(band)
        if local.exists() and local.stat().st_size == info.size:
            return bandfmt.BandReader(
                _FileRange(local).read, info.size, frames, label=band, cache_bytes=cache
            )
        key, store = band_key(band), self.store
        return bandfmt.BandReader(
            lambda start, length: store.get_range(key, start, length),
            info.size,
            frames,
            label=band,
            cache_bytes=cache,
        )

    def cached_band_path(self, band: BandId) -> Path:
        """Where the local cache keeps a whole copy of `band` (the one place that says so)."""
        return band_file(self.cache_dir, band)

    def band_cached(self, band: BandId) -> bool:
        """Whether a complete copy of the band is in the local cache (readable now)."""
        info = self.catalog.band(band)
        local = self.cached_band_path(band)
        return info is not None and local.exists() and local.stat().st_size == info.size

    # ---- retention support -------------------------------------------------------------
    #
    # Forgetting a version is written down on the store as a write-once marker
    # ``forgotten/<collection>/<number>.json`` = {"collection", "number",
    # "forgotten_ns"}, put with If-None-Match before the version leaves the local
    # catalog. The marker is never deleted: the version record and band catalogs
    # that still name the version must not bring it back in an index rebuild.

    FORGOTTEN_PREFIX = "forgotten/"

    @staticmethod
    def forgotten_key(collection: str, number: int) -> str:
        """The store key of the marker saying ``collection@v<number>`` was forgotten."""
        return f"forgotten/{collection}/{number}.json"

    def mark_forgotten(self, collection: str, number: int, forgotten_ns: int) -> bool:
        """Write the marker (If-None-Match); False when it was already there (not an error)."""
        doc = {"collection": collection, "number": number, "forgotten_ns": forgotten_ns}
        try:
            self.store.put(
                self.forgotten_key(collection, number),
                json.dumps(doc, sort_keys=True).encode(),
                if_none_match=True,
            )
        except ObjectExists:
            return False
        return True

    def forgotten_versions(self) -> set[tuple[str, int]]:
        """Every (collection, number) with a marker on the store (one listing of ``forgotten/``).

        Keys that do not have the marker's shape are ignored.
        """
        out: set[tuple[str, int]] = set()
        for info in self.store.list(self.FORGOTTEN_PREFIX):
            parts = info.key[len(self.FORGOTTEN_PREFIX) :].split("/")
            if len(parts) == 2 and parts[1].endswith(".json") and parts[1][:-5].isdigit():
                out.add((parts[0], int(parts[1][:-5])))
        return out

    # Acceptances (`vaultfs.acceptance`): write-once objects on the store, copied into the
    # local catalog. The store is written first, so a crash in between leaves the catalog
    # without it: the version stays pinned (safe) until `sync_acceptances` copies it.

    def record_acceptance(self, acceptance: Acceptance) -> None:
        """Put the acceptance on the store (If-None-Match), then in the local catalog."""
        self._put_record_once(
            acceptance.store_key,
            acceptance.to_json(),
            f"{acceptance.store_key} already exists on the store (another accept at the "
            "same nanosecond?): run the command again",
        )
        with self.catalog.writer() as w:
            w.put_acceptance(acceptance)

    def sync_acceptances(self) -> tuple[int, list[str]]:
        """Copy into the local catalog every acceptance on the store it lacks (one LIST, a
        GET for each one missing): after an index rebuild, or an accept killed between
        its two writes. Returns how many were copied and the objects that could not be
        read (they are left out: their versions stay pinned)."""
        have = {a.key for a in self.catalog.acceptances()}
        found: list[Acceptance] = []
        problems: list[str] = []
        for info in self.store.list(ACCEPTED_PREFIX):
            key = parse_accepted_key(info.key)
            if key is None or key in have:
                continue
            try:
                acceptance = decode_record(Acceptance.from_json, self.store.get(info.key), info.key)
            except (BadRecord, ObjectNotFound) as e:
                problems.append(f"acceptance {info.key} is unreadable ({e}): its versions stay pinned")
                continue
            if acceptance.key != key:
                problems.append(f"acceptance {info.key} names another key: its versions stay pinned")
                continue
            found.append(acceptance)
        if found:
            with self.catalog.writer() as w:
                for acceptance in found:
                    w.put_acceptance(acceptance)
        return len(found), problems


class _FileRange:
    """pread-based range reads of a local band file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, start: int, length: int) -> bytes:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)


def _prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("spool", "cache"):
            (path / sub).mkdir(exist_ok=True, mode=0o700)
    except OSError as e:
        raise StoreSetupError(
            f"cannot create the state directory {path}: {e.strerror}; "
            "set [vault].state_dir to a writable directory"
        ) from None


def secure_state_dir(path: Path) -> str | None:
    """Make a pre-existing state directory private, for `vaultfs init`.

    The state dir holds the catalog (every file name of every version), the spool and
    the cache (whole bands: the files' contents), so it must be 0700. One that other
    users can enter is tightened to 0700 (its entries lose their group and other bits
    too) when this user owns it; when another user does, init refuses (StoreSetupError)
    rather than back up into a directory that it cannot make private. Returns the line
    that says what was changed (None: nothing was).
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return None  # `_prepare_state_dir` creates it 0700
    if not stat.S_ISDIR(st.st_mode):
        raise StoreSetupError(f"the state directory {path} is not a directory: fix [vault].state_dir")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return None
    if st.st_uid != os.geteuid():
        raise StoreSetupError(
            f"the state directory {path} is open to other users (mode {mode:04o}) and "
            f"belongs to uid {st.st_uid}, not this user: `chmod 700` it as its owner, or "
            "set [vault].state_dir to a directory of this user"
        )
    try:
        os.chmod(path, 0o700)
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                _drop_group_other(Path(dirpath) / name)
    except OSError as e:
        raise StoreSetupError(f"cannot make the state directory {path} private: {e.strerror}") from None
    return f"the state directory {path} was open to other users (mode {mode:04o}): now 0700"


def _drop_group_other(path: Path) -> None:
    st = path.lstat()
    if not stat.S_ISLNK(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def lost_message(lost: LostBlob) -> str:
    """One line saying why a file's bytes are gone and what can bring them back."""
    where = f"band {lost.band}" if lost.band else "the band that held them"
    state = "is missing from the store" if lost.why == "missing" else "is damaged"
    return (
        f"its bytes are lost ({where} {state}); a snapshot stores them again if a source still has the file"
    )


def _vault_description(
    store: ObjectStore, config: Config, local_id: str | None
) -> tuple[dict[str, Any], bool]:
    """The store's ``vault.json``, written first (If-None-Match) into an empty store;
    and whether it was written now. A store that holds something else is refused."""
    try:
        return json.loads(store.get(VAULT_KEY)), False
    except ObjectNotFound:
        pass
    except ValueError:
        raise StoreSetupError(
            f"{config.store}/{VAULT_KEY} is not a vault description: "
            "this store holds something else; choose another prefix or directory"
        ) from None
    if local_id is not None:
        raise StoreSetupError(
            f"the state directory {config.state_dir} belongs to vault {local_id}, "
            f"which is not on {config.store}: use another state_dir"
        )
    if any(True for _ in store.list("")):
        raise StoreSetupError(
            f"{config.store} is not empty and holds no vault: choose an empty bucket prefix or directory"
        )
    import uuid  # here, for the one vault id: with `platform`, ~3 ms of every command's start-up

    remote = {
        "format": VAULT_FORMAT,
        "vault_id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        store.put(VAULT_KEY, json.dumps(remote, indent=1).encode(), if_none_match=True)
    except ObjectExists:
        remote = json.loads(store.get(VAULT_KEY))  # another machine's init won the race
    return remote, True
