"""`rebuild`: a fresh local catalog from the rebuild ladder, swapped in for the live one.

The rungs are tried from the top (`ladder.RUNGS`): 1 the live LMDB, kept when it
verifies (`verify.verify_catalog`); a damaged one is set aside as
``catalog.lmdb.damaged-<UTC time>``, never deleted. 2 the index objects (`objects`),
topped up from sidecars. 3-5 every band's catalog (`ladder`). What a rung yields is
installed into a new LMDB next to the live one, which is kept as
``catalog.lmdb.before-rebuild``; then versions committed on the store are adopted,
damaged store objects repaired (`repair`) and the acceptances of changes to cold
collections (``accepted/``) copied in.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from vaultfs.catalog import Catalog, check_data_file
from vaultfs.config import Config
from vaultfs.errors import CorruptionError, StoreSetupError, VaultError
from vaultfs.index.ladder import RUNGS, Confirm, Ladder, RebuildReport
from vaultfs.index.listing import StoreListing, band_state
from vaultfs.index.objects import IndexContent, VersionKey, load_index
from vaultfs.index.publishing import IndexState
from vaultfs.index.repair import adopt, repair
from vaultfs.index.verify import check_content, content_gaps, lost_paths, verify_catalog
from vaultfs.model import (
    VAULT_KEY,
    BadRecord,
    BandInfo,
    BlobId,
    LostBlob,
    TreeId,
    decode_record,
)
from vaultfs.output import display_path
from vaultfs.store import ObjectNotFound, ObjectStore
from vaultfs.vault import Vault


def rebuild(
    config: Config, store: ObjectStore, *, start: str | None = None, confirm: Confirm = lambda plan: False
) -> RebuildReport:
    """Rebuild ``<state_dir>/catalog.lmdb`` (see the module docstring). `start` forces a
    rung (index, sidecars, tails, scan); None walks the ladder from rung 1. The old LMDB
    is kept as ``catalog.lmdb.before-rebuild`` when it is replaced. Takes the vault lock
    (LockedError while a snapshot runs). One function on purpose: the order of its steps
    (lock, set aside, walk the rungs, install, repair) is the crash-safety argument, read
    top to bottom; each step is a call."""
    if start is not None and start not in RUNGS[1:]:
        raise VaultError(f"--from {start}: expected one of {', '.join(RUNGS[1:])}")
    state = config.state_dir
    for d in (state, state / "spool", state / "cache"):
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StoreSetupError(f"cannot create the state directory {d}: {e.strerror}") from None
    try:
        vault_id = decode_record(lambda d: str(d["vault_id"]), store.get(VAULT_KEY), VAULT_KEY)
    except ObjectNotFound:
        raise StoreSetupError(
            f"{config.store} holds no vault (no {VAULT_KEY}): check [vault].store"
        ) from None
    except BadRecord:
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
            ladder = Ladder(
                store,
                listing,
                state / "spool",
                confirm,
                report,
                config.s3.restore_days,
                config.s3.restore_tier,
            )
            _rebuild_locked(vault, ladder, live, vault_id, start)
            catalog.close()
            if report.rung != "lmdb":
                old = state / "catalog.lmdb.before-rebuild"
                if live.exists() and _truncated(live):  # with --from, rung 1 did not look
                    report.notes.append(f"the damaged local catalog is kept as {_set_aside_damaged(live)}")
                if live.exists():
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(live, old)
                os.replace(new, live)
            done = Vault(config, store, Catalog(live))
            try:
                if report.rung == "lmdb":  # lost files recorded before: still lost
                    _report_recorded_lost(done, report)
                adopt(done, ladder, listing)
                repair(done, report, listing)
                _restore_acceptances(done, report)
                # Every version the catalog now holds: kept, rebuilt or adopted.
                report.versions = [f"{v.collection}@v{v.number}" for v in done.catalog.all_versions()]
            finally:
                done.close()
            return report
    finally:
        catalog.close()
        shutil.rmtree(new, ignore_errors=True)


def _restore_acceptances(vault: Vault, report: RebuildReport) -> None:
    """Acceptances (``accepted/``, `vaultfs.acceptance`) are on no rung of the ladder: the
    store's objects are copied into the catalog, whichever rung it came from."""
    copied, problems = vault.sync_acceptances()
    if copied:
        report.notes.append(f"brought back {copied} acceptance(s) of changes from the store")
    report.warnings += problems  # the catalog is whole; those versions stay pinned (safe)


def _truncated(live: Path) -> bool:
    try:
        check_data_file(live)
    except CorruptionError:
        return True
    return False


def _rebuild_locked(vault: Vault, ladder: Ladder, live: Path, vault_id: str, start: str | None) -> None:
    """Walk the ladder from rung 1 (or `start`) down: the first rung whose result
    verifies is installed into `vault`'s (new, empty) catalog; rung 1 installs nothing
    (the live catalog is kept)."""
    report = ladder.report
    rungs = RUNGS if start is None else RUNGS[RUNGS.index(start) :]
    if start is not None:
        report.why.append(f"rungs above {start} not tried: --from {start}")
    for rung in rungs:
        if rung == "lmdb":
            done = _from_live(vault, report, live, vault_id)
        elif rung == "index":
            done = _from_index(vault, ladder, vault_id)
        else:
            done = _from_bands(vault, ladder, vault_id, rung)
        if done:
            return
    raise VaultError("no rung of the ladder could rebuild the catalog")  # pragma: no cover


def _from_live(vault: Vault, report: RebuildReport, live: Path, vault_id: str) -> bool:
    """Rung 1: True when the live LMDB verifies (it is kept)."""
    why = _verify_live(live, vault_id, vault.config.store)
    if why is None:
        report.rung = "lmdb"
        return True
    report.why.append(f"rung 1 (local catalog) not used: {why}")
    return False


def _from_index(vault: Vault, ladder: Ladder, vault_id: str) -> bool:
    """Rung 2: the index objects, topped up with versions and bands committed after the
    newest one (from their sidecars); installed when every version is whole."""
    listing, report = ladder.listing, ladder.report
    loaded = load_index(vault.store, vault_id, listing.forgotten)
    if not loaded.objects and not loaded.problems:
        report.why.append(
            "rung 2 (consolidated index) not used: the store holds no "
            "index objects" + (" that verify: " + "; ".join(loaded.skipped) if loaded.skipped else "")
        )
        return False
    if loaded.problems:
        report.why.append("rung 2 (consolidated index) not used: " + "; ".join(loaded.problems))
        return False
    report.notes += [f"passed over {s}" for s in loaded.skipped]
    content = loaded.content
    indexed = IndexContent(versions=dict(content.versions), bands=dict(content.bands))
    committed = listing.committed()
    content.versions = {vk: v for vk, v in content.versions.items() if vk in committed}
    _top_up(ladder, content, committed, loaded.latest_generation)
    _refresh_band_states(content, listing)
    lacking = sorted(vk for vk, lacks in check_content(content).items() if lacks)
    if lacking:
        report.why.append(
            "rung 2 (consolidated index) not used: incomplete for "
            + ", ".join(f"{c}@v{n}" for c, n in lacking)
        )
        return False
    report.rung = "index"
    report.bands = {b: "index" for b in content.bands}
    _install(vault, content, vault_id, report, indexed, loaded.latest_generation)
    return True


def _top_up(ladder: Ladder, content: IndexContent, committed: set[VersionKey], generation: int) -> None:
    """Add to `content` the bands and committed versions the index objects lack (written
    after the newest one), from their sidecars."""
    extra_bands = set(ladder.listing.bands) - set(content.bands)
    extra_versions = committed - set(content.versions)
    if not extra_bands and not extra_versions:
        return
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
    ladder.report.notes.append(
        f"index objects up to generation {generation}, plus "
        f"{len(more)} newer version(s) and {len(extra_bands)} newer band(s) "
        "from their sidecars"
    )


def _from_bands(vault: Vault, ladder: Ladder, vault_id: str, rung: str) -> bool:
    """Rungs 3-5: every band's catalog, each band falling further on its own; versions
    whose trees are gone are left out, files whose blobs are gone recorded as lost."""
    listing, report = ladder.listing, ladder.report
    ladder.recover_bands(listing.bands, rung)
    content = ladder.content(ladder.versions(listing.committed()))
    loaded = load_index(vault.store, vault_id, listing.forgotten)
    # Trees are content-addressed (each checked against its id): any surviving copy
    # serves, from the sidecar of a band that is gone or from the index objects.
    for cat in ladder.orphans().values():
        for tid, enc in cat.trees.items():
            content.trees.setdefault(tid, enc)
    for tid, enc in loaded.content.trees.items():
        content.trees.setdefault(tid, enc)
    _drop_treeless(report, content)
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
    return True


def _drop_treeless(report: RebuildReport, content: IndexContent) -> None:
    """Leave out (and report) the versions some of whose directory listings are gone:
    without them a version cannot even be listed."""
    for vk, (trees, _) in sorted(content_gaps(content).items()):
        if trees:
            report.problems.append(
                f"{vk[0]}@v{vk[1]} cannot be recovered: its directory listings are gone "
                f"(tree {', tree '.join(t.hex()[:16] for t in trees[:5])}"
                + (f" and {len(trees) - 5} more" if len(trees) > 5 else "")
                + ")"
            )
            content.versions.pop(vk)


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


def _report_lost(
    report: RebuildReport, content: IndexContent, lost: dict[BlobId, LostBlob], ladder: Ladder
) -> None:
    """Put the lost blobs, the files they leave without bytes and the damaged bands into
    the report."""
    report.lost = lost
    for band, cat in sorted(ladder.catalogs.items()):
        if cat.damage:
            report.damaged_bands[band] = list(cat.damage)
            report.notes.append(
                f"band {band} is damaged ({'; '.join(cat.damage)}): "
                f"{len(cat.blobs)} member(s) recovered by the scan"
            )
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
        if catalog.meta("vault_id") is None:
            return "it names no vault (an init that stopped part-way)"
        if catalog.meta("vault_id") != vault_id or catalog.meta("store") != store_url:
            return "it belongs to another vault or store"
        walk = verify_catalog(catalog)
        if walk.problems:
            return walk.problems[0] + (
                f" (and {len(walk.problems) - 1} more problem(s))" if len(walk.problems) > 1 else ""
            )
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
                {**info.to_json(), "storage_class": obj.storage_class, "state": band_state(obj)}
            )


def _install(
    vault: Vault,
    content: IndexContent,
    vault_id: str,
    report: RebuildReport,
    indexed: IndexContent | None,
    generation: int,
    lost: dict[BlobId, LostBlob] | None = None,
) -> None:
    """Write `content` into the (new, empty) catalog of `vault`. `indexed`: what of it the
    consolidated index already holds (None: the index must be rewritten in full). `lost`:
    blobs the versions name whose bytes are nowhere (their files read as lost; a snapshot
    that finds the same content again stores it and heals them)."""
    state = IndexState(generation=generation, needs_full=indexed is None)
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
