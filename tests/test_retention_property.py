"""Property: forget and prune never lose anything a kept version needs.

Random sequences of file changes, snapshots, storage-class changes, clock
jumps, forgets and prunes (dry and real, with and without
--allow-early-delete) run in-process against a file:// vault. After every
step `World.check` verifies the invariants and restores every kept version,
comparing it byte for byte with what the source held when it was snapshotted.
"""

from __future__ import annotations

import os
import random
import stat
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from vaultfs import band as bandfmt
from vaultfs import retention
from vaultfs.config import CollectionConfig, Config, KeepPolicy
from vaultfs.extract import fetch
from vaultfs.model import BandId, BlobId, TreeId, band_key, sidecar_key, version_key
from vaultfs.snapshot import Snapshot
from vaultfs.store import ObjectNotFound
from vaultfs.vault import Vault

DAY = retention.NS_PER_DAY
PATHS = ("a", "b", "d1/c", "d1/d", "d2/e", "d3/deep/f")
SIZES = (0, 10, 3_000, 30_000, 70_000, 120_000, 5_000, 90_000)
CLASSES = ("DEEP_ARCHIVE", "STANDARD", "GLACIER_IR", "STANDARD_IA")

Tree = dict[str, tuple[str, bytes]]  # path → ("file", content) | ("link", target) | ("dir", b"")


def content(index: int) -> bytes:
    return random.Random(index).randbytes(SIZES[index])


def read_tree(root: Path) -> Tree:
    """What a restore must give back: every file's bytes, symlink target, directory."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st_ = full.lstat()
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.fsencode(os.readlink(full)))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", b"")
            else:
                out[rel] = ("file", full.read_bytes())
    return out


class World:
    """One vault, its source tree, a simulated clock, and a model of what must be kept."""

    def __init__(self, tmp: Path, band_size: int = 64 * 1024) -> None:
        self.tmp = tmp
        self.src = tmp / "src" / "c"
        self.src.mkdir(parents=True)
        self.coll = CollectionConfig("c", self.src, "warm")
        self.config = Config(
            store=f"file://{tmp / 'store'}",
            state_dir=tmp / "state",
            band_size=band_size,
            threads=1,
            collections=(self.coll,),
        )
        self.vault, _ = Vault.create(self.config)
        # Simulated time starts long ago: the consolidated index uses BandInfo.created_ns as
        # a watermark, so the created_ns this test gives bands must stay below real time.
        self.clock = time.time_ns() - 30 * 365 * DAY
        self.mtime = 1_700_000_000 * 10**9
        self.expected: dict[int, Tree] = {}
        self.kept: list[int] = []  # the model: version numbers that must be listed
        self.forgotten: set[int] = set()
        self.records_gone: set[int] = set()  # forgotten before a real prune: record deleted
        self.band_terms: dict[BandId, tuple[str, int]] = {}  # class, created_ns (as set here)
        self.sidecars: dict[BandId, set[TreeId]] = {}
        self.restores = 0

    def close(self) -> None:
        self.vault.close()

    # ---- changes to the source -----------------------------------------------------------

    def write(self, path: str, index: int) -> None:
        full = self.src / path
        full.parent.mkdir(parents=True, exist_ok=True)
        tmp = full.with_name(".tmp-" + full.name)
        tmp.write_bytes(content(index))
        # A unique mtime: the files cache must never mistake a rewrite for the old file.
        self.mtime += 1_000_003
        os.utime(tmp, ns=(self.mtime, self.mtime))
        os.replace(tmp, full)

    def delete(self, path: str) -> None:
        full = self.src / path
        if full.is_file() or full.is_symlink():
            full.unlink()

    def link(self, index: int) -> None:
        """A directory holding only a symlink: its tree carries no blobs (issue: tree carriers)."""
        d = self.src / "links"
        d.mkdir(exist_ok=True)
        name = d / f"l{index}"
        if name.is_symlink():
            name.unlink()
        else:
            name.symlink_to(f"target-{index}")
        (self.src / "empty").mkdir(exist_ok=True)

    # ---- vault operations ----------------------------------------------------------------

    def snapshot(self, class_index: int) -> None:
        before = {b.band for b in self.vault.catalog.bands()}
        with self.vault.lock():
            result = Snapshot(self.vault, self.coll, now=lambda: self.clock).run()
        assert not result.problems, result.problems
        # Bands "move" to a storage class at the simulated time (issue 4 is not built yet).
        storage_class = CLASSES[class_index]
        with self.vault.catalog.writer() as w:
            for info in self.vault.catalog.bands():
                if info.band not in before:
                    w.put_band(replace(info, storage_class=storage_class, created_ns=self.clock))
                    self.band_terms[info.band] = (storage_class, self.clock)
        if result.version is not None:
            self.expected[result.version.number] = read_tree(self.src)
            self.kept.append(result.version.number)

    def forget(self, keep: int, dry_run: bool) -> None:
        with self.vault.lock():
            policy = {"c": KeepPolicy(keep_versions=keep)}
            [r] = retention.forget(self.vault, policy, dry_run=dry_run, now=lambda: self.clock)
        drop = self.kept[:-keep] if len(self.kept) > keep else []
        assert list(r.forgotten) == drop
        if not dry_run:
            self.kept = self.kept[len(drop) :]
            self.forgotten |= set(drop)

    def prune(self, allow_early: bool, dry_run: bool) -> retention.PruneResult:
        before_state = self.fingerprint() if dry_run else None
        bands_before = {b.band for b in self.vault.catalog.bands()}
        with self.vault.lock():
            result = retention.prune(
                self.vault,
                dry_run=dry_run,
                allow_early_delete=allow_early,
                now=lambda: self.clock,
                collections=["c"],
            )
        for what, happened in (
            ("band deleted", result.deleted),
            ("deleted early", result.of("delete-early")),
            ("kept young", result.of("keep-young")),
            ("kept partly used", result.partly_used),
            ("kept for trees", result.of("keep-trees")),
            ("trees re-homed", result.trees_rehomed),
        ):
            if happened and currently_in_test_context():
                event(f"prune: {what}")
        if dry_run:
            assert self.fingerprint() == before_state, "a dry run changed something"
            return result
        bands_after = {b.band for b in self.vault.catalog.bands()}
        gone = bands_before - bands_after
        assert gone == {b.band for b in result.deleted}
        if result.carrier_band is not None:
            info = self.vault.catalog.band(result.carrier_band)
            assert info is not None and info.blobs == 0
            self.band_terms[info.band] = (info.storage_class, info.created_ns)
        for band in gone:
            storage_class, created = self.band_terms[band]
            min_days = retention.min_days(storage_class)
            if not allow_early:
                # (carrier bands are stamped with real time, ahead of the simulated clock)
                assert max(0, self.clock - created) >= min_days * DAY, (band, storage_class)
        self.records_gone |= self.forgotten
        return result

    # ---- invariants ----------------------------------------------------------------------

    def fingerprint(self) -> Any:
        cat = self.vault.catalog
        store_root = Path(self.config.store[len("file://") :])
        files = sorted(
            (str(p.relative_to(store_root)), p.read_bytes()) for p in store_root.rglob("*") if p.is_file()
        )
        return (
            [v.to_json() for v in cat.all_versions()],
            sorted(b.to_json()["band"] + repr(b) for b in cat.bands()),
            sorted(cat.blob_refs()),
            sorted(cat.tree_ids()),
            cat.meta(retention.PENDING_META),
            files,
        )

    def sidecar_trees(self, band: BandId) -> set[TreeId]:
        if band not in self.sidecars:
            doc = bandfmt.decode_sidecar(self.vault.store.get(sidecar_key(band)))
            self.sidecars[band] = {TreeId(bytes.fromhex(t)) for t in doc.get("trees", {})}
        return self.sidecars[band]

    def check(self) -> None:
        vault, cat, store = self.vault, self.vault.catalog, self.vault.store
        listed = [v.number for v in cat.versions("c")]
        assert listed == self.kept
        markers = vault.forgotten_versions()
        assert markers == {("c", n) for n in self.forgotten}
        assert not set(listed) & self.forgotten
        bands = {b.band for b in cat.bands()}
        on_store = {i.key[len("bands/") :].split(".", 1)[0] for i in store.list("bands/")}
        assert on_store == bands, "the store and the catalog disagree about the bands"
        refs = dict(cat.blob_refs())
        assert {r.band for r in refs.values()} <= bands
        live = retention.live_set(vault, cat.versions("c"))
        for blob in live.blobs:
            assert blob in refs, f"blob {blob.hex()[:12]} of a kept version lost"
            key = band_key(refs[BlobId(blob)].band)
            assert store.head(key).size > 0
        carried: set[TreeId] = set()
        for band in bands:
            carried |= self.sidecar_trees(band)
        assert live.trees <= carried, "a tree of a kept version is in no band catalog"
        for v in cat.versions("c"):
            assert set(v.bands) <= bands
            store.head(version_key("c", v.number))
        for n in self.records_gone:
            try:
                store.head(version_key("c", n))
            except ObjectNotFound:
                continue
            raise AssertionError(f"version record of forgotten v{n} survived a prune")
        for n in self.kept:
            out = self.tmp / f"restore-{self.restores}"
            self.restores += 1
            result = fetch(vault, "c", n, [], out)
            assert not result.problems
            assert read_tree(out) == self.expected[n], f"v{n} did not come back byte for byte"
        run_check_module(vault)


def run_check_module(vault: Vault) -> None:
    """Also run `vaultfs.check` (being built in parallel) when it offers a vault-wide check."""
    from vaultfs import check

    func = getattr(check, "check_vault", None) or getattr(check, "check", None)
    if callable(func):
        report = func(vault)
        problems = getattr(report, "problems", None)
        assert not problems, problems


# ---- the property ----------------------------------------------------------------------------

change = st.one_of(
    st.tuples(st.just("write"), st.integers(0, len(PATHS) - 1), st.integers(0, len(SIZES) - 1)),
    st.tuples(st.just("write"), st.integers(0, len(PATHS) - 1), st.integers(0, len(SIZES) - 1)),
    st.tuples(st.just("delete"), st.integers(0, len(PATHS) - 1)),
    st.tuples(st.just("link"), st.integers(0, 2)),
)
# A round: a few changes to the source, then a snapshot whose bands go to a storage class.
round_ = st.tuples(
    st.just("round"), st.lists(change, min_size=1, max_size=3), st.integers(0, len(CLASSES) - 1)
)
forget_ = st.tuples(st.just("forget"), st.integers(1, 3), st.booleans())
prune_ = st.tuples(st.just("prune"), st.booleans(), st.sampled_from((False, False, True)))
# forget then prune, as a user with keep_versions would run them
retain = st.tuples(st.just("retain"), st.integers(1, 2), st.booleans())
op = st.one_of(
    round_,
    round_,
    round_,
    forget_,
    prune_,
    retain,
    retain,
    st.tuples(st.just("advance"), st.sampled_from((1, 29, 31, 89, 91, 181))),
)


@settings(
    max_examples=int(os.environ.get("VAULTFS_RETENTION_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=st.lists(op, min_size=6, max_size=24))
def test_forget_and_prune_keep_every_kept_version(steps: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        world = World(Path(d))
        try:
            # Start from one version whose first band mixes small files (partly used later).
            world.write("a", 5)
            world.write("b", 2)
            world.write("d1/c", 3)
            world.snapshot(1)  # STANDARD
            world.check()
            for step in steps:
                apply(world, step)
                world.check()
            # End with everything forgotten that may be, and everything pruned that may be.
            world.clock += 200 * DAY
            world.forget(1, dry_run=False)
            world.prune(allow_early=False, dry_run=False)
            world.check()
            assert all(b.action != "keep-young" for b in world.prune(False, True).bands)
        finally:
            world.close()


def apply(world: World, step: tuple[Any, ...]) -> None:
    kind = step[0]
    if kind == "round":
        for change_ in step[1]:
            apply(world, change_)
        world.snapshot(step[2])
    elif kind == "write":
        world.write(PATHS[step[1]], step[2])
    elif kind == "delete":
        world.delete(PATHS[step[1]])
    elif kind == "link":
        world.link(step[1])
    elif kind == "advance":
        world.clock += step[1] * DAY
    elif kind == "forget":
        world.forget(step[1], dry_run=step[2])
    elif kind == "prune":
        world.prune(allow_early=step[1], dry_run=step[2])
    elif kind == "retain":
        world.forget(step[1], dry_run=False)
        world.check()
        world.prune(allow_early=step[2], dry_run=False)
    else:  # pragma: no cover
        raise AssertionError(kind)
