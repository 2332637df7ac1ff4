"""Property (issue 17, point 2): after random histories, random band objects deleted
or damaged and the state directory gone, `index rebuild` (the whole ladder, or
``--from scan``) gives back every version; `restore fetch` restores byte for byte
every file whose bytes still exist in the store and lists exactly the others; a
band scan finds exactly those; and a snapshot afterwards works and stores again the
lost files the source still has.

Which bytes still exist is decided here without vaultfs's scanner: a file is gone
when its band object was deleted, or when a zstd frame holding part of its content
no longer decompresses to what it held (each frame checked on its own against the
frame table recorded before the damage).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.vaultenv import VaultEnv
from vaultfs import band as bandfmt
from vaultfs.errors import CorruptionError
from vaultfs.model import band_key, sidecar_key

PATHS = ("a", "b", "d1/c", "d1/d", "d2/e")
SIZES = (0, 100, 5_000, 40_000, 150_000)

history_st = st.lists(  # snapshots: each a list of (path index, size index or None: delete)
    st.lists(
        st.tuples(st.integers(0, len(PATHS) - 1), st.none() | st.integers(0, len(SIZES) - 1)),
        min_size=1,
        max_size=4,
    ),
    min_size=1,
    max_size=3,
)
damage_st = st.lists(st.sampled_from(("none", "none", "delete", "flip", "tail")), min_size=1, max_size=12)


@dataclass
class Band:
    band: str
    frames: tuple[bandfmt.Frame, ...]
    refs: dict[bytes, tuple[int, int]]  # blob -> (offset, size)


def frames_of(sizes: tuple[tuple[int, int], ...]) -> tuple[bandfmt.Frame, ...]:
    out, coff, uoff = [], 0, 0
    for c, u in sizes:
        out.append(bandfmt.Frame(coff, c, uoff, u))
        coff, uoff = coff + c, uoff + u
    return tuple(out)


def damaged_frames(before: bytes, after: bytes, frames: tuple[bandfmt.Frame, ...]) -> set[int]:
    """Indexes of the frames that no longer decompress to what they held."""
    out = set()
    for i, f in enumerate(frames):
        old = before[f.compressed_offset : f.compressed_offset + f.compressed_size]
        new = after[f.compressed_offset : f.compressed_offset + f.compressed_size]
        if old == new:
            continue
        try:
            if bandfmt.decompress_frames(new, (f,)) == bandfmt.decompress_frames(old, (f,)):
                continue
        except CorruptionError:
            pass
        out.add(i)
    return out


def run_history(
    env: VaultEnv, src: Path, history: list[list[tuple[int, int | None]]], rnd: random.Random
) -> tuple[dict[int, dict[str, bytes]], dict[str, bytes]]:
    """Snapshot after each step of `history`: the tree of every version, and the source
    as it is at the end."""
    trees: dict[int, dict[str, bytes]] = {}
    current: dict[str, bytes] = {}
    for step in history:
        for pi, si in step:
            path = src / PATHS[pi]
            if si is None:
                path.unlink(missing_ok=True)
                current.pop(PATHS[pi], None)
            else:
                data = rnd.randbytes(SIZES[si])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                current[PATHS[pi]] = data
        env.run("snapshot", expect=None)  # 3: deletions in a cold collection (a warning)
        numbers = [v["version"] for v in env.versions("p")]
        if numbers:
            trees[numbers[-1]] = dict(current)
    return trees, current


def bands_of(env: VaultEnv) -> dict[str, Band]:
    """Every band with its frames and the blobs it holds, as the catalog records them."""
    vault = env.open_vault()
    try:
        bands = {b.band: Band(b.band, frames_of(b.frames), {}) for b in vault.catalog.bands()}
        for blob, ref in vault.catalog.iter_blobs():
            bands[ref.band].refs[bytes(blob)] = (ref.offset, ref.size)
    finally:
        vault.close()
    return bands


def damage_bands(env: VaultEnv, bands: dict[str, Band], damage: list[str], rnd: random.Random) -> set[bytes]:
    """Delete or damage band objects as `damage` says; the blobs whose bytes no longer
    exist in the store."""
    gone: set[bytes] = set()
    for b, what in zip(sorted(bands), damage, strict=False):
        path = env.store_dir / band_key(b)
        if what == "delete":
            path.unlink()
            gone |= set(bands[b].refs)
            continue
        if what == "none":
            continue
        before = path.read_bytes()
        raw = bytearray(before)
        if what == "flip":
            raw[rnd.randrange(len(raw) // 4, 3 * len(raw) // 4)] ^= 1 << rnd.randrange(8)
        else:  # the seek table and the end of the catalog frame
            for i in range(1, 49):
                raw[-i] ^= 0xA5
        path.write_bytes(bytes(raw))
        gone |= blobs_in_frames(bands[b], damaged_frames(before, bytes(raw), bands[b].frames))
    return gone


def blobs_in_frames(band: Band, bad: set[int]) -> set[bytes]:
    """The blobs of `band` with part of their content in one of the frames `bad`."""
    return {
        blob
        for blob, (off, size) in band.refs.items()
        if any(
            size and off < f.uncompressed_offset + f.uncompressed_size and off + size > f.uncompressed_offset
            for i, f in enumerate(band.frames)
            if i in bad
        )
    }


def check_fetch(
    env: VaultEnv, tmp: str, trees: dict[int, dict[str, bytes]], n: int, missing: set[bytes], tag: str
) -> None:
    """`restore fetch` of version `n` restores every file but those whose blob is in
    `missing`, and lists exactly those."""
    to = Path(tmp) / f"back-{tag}-{n}"
    out = env.run("restore", "fetch", f"p@v{n}", "--to", str(to), "--json", expect=None)
    result = json.loads(out.stdout)
    lost = {p for p, d in trees[n].items() if hashlib.sha256(d).digest() in missing}
    assert {m["path"] for m in result["missing"]} == lost, (n, result["missing"])
    assert out.returncode == (3 if lost else 0), out.stderr
    for p, d in trees[n].items():
        if p not in lost:
            assert (to / p).read_bytes() == d, p


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # shrinking costs minutes
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    history=history_st,
    damage=damage_st,
    seed=st.integers(0, 2**16),
    from_scan=st.booleans(),
    drop_sidecars=st.booleans(),
)
def test_lost_and_damaged_bands_after_random_histories(
    history: list[list[tuple[int, int | None]]],
    damage: list[str],
    seed: int,
    from_scan: bool,
    drop_sidecars: bool,
) -> None:
    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="ladder-prop-") as tmp:
        env = VaultEnv(
            Path(tmp),
            f"file://{tmp}/store",
            band_size="256KiB",
            extra_config='frame_size = "64KiB"\nallow_empty = true\n',
        )
        src = env.add_collection("p")
        env.run("init")
        trees, current = run_history(env, src, history, rnd)
        if not trees:
            return
        bands = bands_of(env)
        gone = damage_bands(env, bands, damage, rnd)  # blobs whose bytes no longer exist
        if drop_sidecars:
            for b in bands:
                (env.store_dir / sidecar_key(b)).unlink(missing_ok=True)
        shutil.rmtree(env.state_dir)

        args = ["index", "rebuild", "--yes", *(["--from", "scan"] if from_scan else [])]
        proc = env.run(*args, "--json", expect=None)
        doc = json.loads(proc.stdout)
        assert proc.returncode in (0, 3), proc.stdout + proc.stderr
        assert doc["versions"] == [f"p@v{n}" for n in sorted(trees)]
        lost_by_rebuild = {bytes.fromhex(b) for b in doc["lost_blobs"]}
        assert lost_by_rebuild <= gone
        if from_scan:  # every band read: exactly the gone blobs some version names
            named = {hashlib.sha256(d).digest() for t in trees.values() for d in t.values()}
            assert lost_by_rebuild == gone & named

        for n in trees:
            check_fetch(env, tmp, trees, n, gone, "rebuilt")
        # A snapshot works, and stores again what the source still has of the lost blobs.
        assert env.run("snapshot", expect=None).returncode in (0, 3)
        healed = lost_by_rebuild & {hashlib.sha256(d).digest() for d in current.values()}
        for n in trees:
            check_fetch(env, tmp, trees, n, gone - healed, "healed")
