"""Property (issue 17, points 1 and 2 — the snapshot's side): after random histories, random
band objects deleted or damaged, then ``check --read-data`` and a snapshot, every file
whose bytes still exist somewhere — intact in the store, or in the current source —
restores byte for byte, and `check` names exactly the others as lost for good.

In-process on a file:// store with tiny files, small frames and small bands, so one
damaged frame costs some blobs of a band and not others. Which blobs a damage costs is
worked out here from the frame table and the blob's place, not by reading the band.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vaultfs import check as checkmod
from vaultfs import extract
from vaultfs.config import CollectionConfig, Config
from vaultfs.model import BandId, BlobId, BlobRef, band_key
from vaultfs.snapshot import Snapshot
from vaultfs.vault import Vault

PATHS = ("a", "b", "d/c", "d/e", "f")
SIZES = (0, 300, 20_000, 70_000, 130_000, 45_000)
FRAME = 64 * 1024
BAND = 256 * 1024

Files = dict[str, bytes]


def content(index: int) -> bytes:
    return random.Random(index).randbytes(SIZES[index % len(SIZES)])


class World:
    def __init__(self, tmp: Path) -> None:
        self.src = tmp / "src"
        self.src.mkdir()
        self.coll = CollectionConfig("c", self.src, "warm", frame_size=FRAME)
        self.config = Config(
            store=f"file://{tmp / 'store'}",
            state_dir=tmp / "state",
            band_size=BAND,
            threads=1,
            collections=(self.coll,),
        )
        self.store_dir = tmp / "store"
        self.tmp = tmp
        self.vault, _ = Vault.create(self.config)
        self.mtime = 1_700_000_000 * 10**9
        self.expected: dict[int, Files] = {}

    def apply(self, changes: list[tuple[int, int | None]]) -> None:
        for path_i, data_i in changes:
            full = self.src / PATHS[path_i]
            if data_i is None:
                full.unlink(missing_ok=True)
                continue
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_bytes(content(data_i))
            self.mtime += 1_000_003  # the files cache must never mistake a rewrite
            os.utime(full, ns=(self.mtime, self.mtime))
        if not any(p.is_file() for p in self.src.rglob("*")):
            (self.src / "a").write_bytes(b"keep the root non-empty")

    def files(self) -> Files:
        return {str(p.relative_to(self.src)): p.read_bytes() for p in self.src.rglob("*") if p.is_file()}

    def snapshot(self) -> None:
        with self.vault.lock():
            result = Snapshot(self.vault, self.coll).run()
        assert not result.problems, result.problems
        if result.version is not None:
            self.expected[result.version.number] = self.files()

    def check(self) -> checkmod.CheckReport:
        report = checkmod.check(self.vault, read_data=True)
        self.vault.close()  # `record` opens the vault itself, as the CLI does
        checkmod.record(self.config, report)
        self.vault = Vault.open(self.config)
        return report

    def restore(self, number: int) -> tuple[Files, set[str]]:
        to = self.tmp / f"back-{number}-{random.random()}"
        result = extract.fetch(self.vault, "c", number, [], to)
        got = {str(p.relative_to(to)): p.read_bytes() for p in to.rglob("*") if p.is_file()}
        return got, {os.fsdecode(m.path) for m in result.missing}


def intact(ref: BlobRef, frames: tuple[tuple[int, int], ...], damaged_at: int | None) -> bool:
    """Whether the blob's bytes survive a flipped byte at compressed offset `damaged_at`:
    they do unless the frame holding that byte holds some of the blob's bytes."""
    if damaged_at is None or ref.size == 0:
        return True
    coff = uoff = 0
    for csize, usize in frames:
        if coff <= damaged_at < coff + csize:
            return not (uoff < ref.offset + ref.size and ref.offset < uoff + usize)
        coff, uoff = coff + csize, uoff + usize
    return True  # past the data frames (the band's own catalog): no blob touched


history = st.lists(  # snapshots, each after a few changes: (path, content or delete)
    st.lists(
        st.tuples(st.integers(0, len(PATHS) - 1), st.one_of(st.none(), st.integers(0, 11))),
        min_size=1,
        max_size=4,
    ),
    min_size=1,
    max_size=3,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    history=history,
    harm=st.data(),
    after=st.lists(
        st.tuples(st.integers(0, len(PATHS) - 1), st.one_of(st.none(), st.integers(0, 11))), max_size=3
    ),
)
def test_every_surviving_file_restores_and_exactly_the_rest_is_lost(
    history: list[list[tuple[int, int | None]]], harm: st.DataObject, after: list[tuple[int, int | None]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        try:
            for changes in history:
                world.apply(changes)
                world.snapshot()
            catalog = world.vault.catalog
            refs: dict[BlobId, BlobRef] = dict(catalog.iter_blobs())
            frames = {b.band: b.frames for b in catalog.bands()}
            bands = [b.band for b in sorted(catalog.bands(), key=lambda b: b.created_ns)]
            # Each band: kept, deleted, or one byte flipped at a random place.
            fate: dict[BandId, str | int] = {}
            for band in bands:
                kind = harm.draw(st.sampled_from(["keep", "delete", "damage"]))
                obj = world.store_dir / band_key(band)
                if kind == "delete":
                    obj.unlink()
                    fate[band] = "delete"
                elif kind == "damage":
                    raw = bytearray(obj.read_bytes())
                    at = harm.draw(st.integers(0, 999_999)) * len(raw) // 1_000_000
                    raw[at] ^= 0x5A
                    obj.write_bytes(bytes(raw))
                    fate[band] = at
            world.apply(after)  # the source changes too: some content is gone from it
            source = set(world.files().values())

            def survives(data: bytes) -> bool:
                ref = refs.get(BlobId(hashlib.sha256(data).digest()))
                if ref is None:
                    return True  # stored by the snapshot after the harm
                f = fate.get(ref.band, "keep")
                in_store = f != "delete" and intact(ref, frames[ref.band], f if isinstance(f, int) else None)
                return in_store or data in source

            world.check()
            world.snapshot()
            report = world.check()
            lost_reported = {(x.version, os.fsdecode(p)) for x in report.lost for p in x.paths}
            assert all(x.for_good for x in report.lost)
            expected_lost = set()
            for number, files in sorted(world.expected.items()):
                got, missing = world.restore(number)
                gone = {p for p, data in files.items() if not survives(data)}
                expected_lost |= {(number, p) for p in gone}
                assert missing == gone, (number, missing, gone)
                assert got == {p: d for p, d in files.items() if p not in gone}, number
            assert lost_reported == expected_lost
            event(f"files lost for good: {bool(expected_lost)}")
            event(f"bands damaged: {sum(isinstance(f, int) for f in fate.values())}")
            event(f"bands deleted: {sum(f == 'delete' for f in fate.values())}")
            assert report.ok == (not expected_lost), [p.what for p in report.problems]
        finally:
            world.vault.close()
