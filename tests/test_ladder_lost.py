"""The rebuild ladder with bands lost or damaged (issue 17, point 2).

A new NAS (no state directory) whose store lost one band, or holds a band with a
damaged tail, or one flipped byte inside a band: `index rebuild` recovers every
version with every file whose bytes still exist, records exactly the others as lost
(`versions`, `restore fetch`, `index rebuild` itself list them), and the next
snapshot works (no "already exists on the store" loop).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.mounts import mount_log, mounted
from tests.test_restore_missing import band_of, delete_object
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.model import band_key

OLD = 1_500_000_000 * 10**9


def eight_files(env: VaultEnv) -> dict[str, bytes]:
    """8 files of 600 KB in a collection "p", snapshotted into 8 bands of 1 MiB."""
    env.band_size = "1MiB"
    src = env.add_collection("p")
    content = {}
    for i in range(8):
        data = os.urandom(600_000)
        write(src / f"d{i % 2}" / f"f{i}.raw", data, OLD + i)
        content[f"d{i % 2}/f{i}.raw"] = data
    env.run("init")
    env.run("snapshot")
    return content


def new_nas(env: VaultEnv) -> None:
    shutil.rmtree(env.state_dir)


def fetch_all(env: VaultEnv, to: Path, content: dict[str, bytes], lost: set[str], spec: str = "p") -> None:
    """`restore fetch` restores every file not in `lost` byte for byte, lists the lost
    ones and exits 3 when there are any."""
    doc = json.loads(
        env.run("restore", "fetch", spec, "--to", str(to), "--json", expect=3 if lost else 0).stdout
    )
    assert {m["path"] for m in doc["missing"]} == lost
    for path, data in content.items():
        assert (to / path).exists() == (path not in lost), path
        if path not in lost:
            assert (to / path).read_bytes() == data, path


def test_one_lost_band_on_a_new_nas(file_vault: VaultEnv) -> None:
    env = file_vault
    content = eight_files(env)
    victim = "d1/f3.raw"
    band = band_of(env, content[victim])
    assert len({band_of(env, d) for d in content.values()}) == 8
    delete_object(env, band_key(band))
    new_nas(env)

    proc = env.run("index", "rebuild", "--yes", expect=3)
    assert "1 version(s); 1 file(s) in them lost" in proc.stdout, proc.stdout
    assert f"lost: p@v1: {victim}" in proc.stderr
    doc = env.json("index", "rebuild", "--yes", expect=3)  # again: the same answer
    assert doc["rung"] == "lmdb"  # a catalog with lost blobs recorded verifies
    assert doc["lost_files"] == {"p@v1": [victim]}
    blob = hashlib.sha256(content[victim]).hexdigest()
    assert doc["lost_blobs"][blob]["why"] == "missing"
    assert doc["lost_blobs"][blob]["band"] == band

    (v1,) = env.versions("p")
    assert v1["lost_files"] == 1 and v1["lost"] == [victim]
    table = env.run("versions", "p").stdout
    assert "LOST" in table and "1" in table.splitlines()[1]

    plan = env.json("restore", "plan", "p")  # lost files need no band restored
    assert plan["bands_needed"] == 7, plan
    fetch_all(env, env.tmp / "back", content, {victim})
    proc = env.run("restore", "fetch", "p", "--to", str(env.tmp / "back2"), expect=3)
    assert any(
        line.startswith("not restored: ") and victim in line and "lost" in line
        for line in proc.stderr.splitlines()
    ), proc.stderr

    with mounted(env, env.tmp / "mnt") as mnt:
        for path, data in content.items():
            if path == victim:
                with pytest.raises(OSError) as err:
                    (mnt / "p" / "latest" / path).read_bytes()
                assert err.value.errno == errno.EIO
            else:
                assert (mnt / "p" / "latest" / path).read_bytes() == data, path
    log = [line for line in mount_log(env).read_text().splitlines() if "answered EIO" in line]
    assert (
        len(log) == 1
        and f"p@v1/{victim}" in log[0]
        and f"band {band}" in log[0]
        and "missing from the store" in log[0]
    ), log

    # The source still has the file: the snapshot stores it again, which heals v1 (the
    # tree is unchanged, so no new version); a changed source gets a new version.
    env.run("snapshot")
    (v1,) = env.versions("p")
    assert v1["lost_files"] == 0
    fetch_all(env, env.tmp / "back3", content, set())
    write(env.collections["p"][0] / "new.raw", b"new", OLD)
    env.run("snapshot")
    assert [v["version"] for v in env.versions("p")] == [1, 2]


@pytest.mark.parametrize("which", ["middle", "last"])
def test_damaged_band_tail_without_index_or_sidecars(file_vault: VaultEnv, which: str) -> None:
    """A middle band: its seek table and the end of its catalog frame are damaged; every
    member is recovered by the scan. The last band (its catalog holds the version's
    directory listings, and neither sidecars nor index objects are left): its seek table
    and its catalog frame's checksum are damaged; the listings are salvaged from the
    catalog frame (each checked against its id) and the version is whole."""
    env = file_vault
    content = eight_files(env)
    middle = band_of(env, content["d0/f2.raw"])
    vault = env.open_vault()
    try:
        (v1,) = vault.catalog.versions("p")
        band = v1.bands[-1] if which == "last" else middle
        frames = next(b.frames for b in vault.catalog.bands() if b.band == band)
    finally:
        vault.close()
    assert which == "last" or band != v1.bands[-1]
    for key in env.store_keys("index/"):
        delete_object(env, key)
    for key in env.store_keys("bands/"):
        if key.endswith(".catalog.zst"):
            delete_object(env, key)
    path = env.store_dir / band_key(band)
    raw = bytearray(path.read_bytes())
    span = 300 if which == "middle" else 17 + 8 * len(frames) + 4
    for i in range(1, span + 1):
        raw[-i] ^= 0x5A
    path.write_bytes(bytes(raw))
    new_nas(env)

    doc = env.json("index", "rebuild", "--yes", expect=0)
    assert doc["versions"] == ["p@v1"] and doc["lost_files"] == {}, doc
    assert band in doc["damaged_bands"] and doc["band_sources"][band] == "scan"
    fetch_all(env, env.tmp / "back", content, set())
    write(env.collections["p"][0] / "new.raw", b"new", OLD)
    env.run("snapshot")
    assert [v["version"] for v in env.versions("p")] == [1, 2]


def test_scan_recovers_members_before_and_after_a_flipped_byte(file_vault: VaultEnv) -> None:
    """One band with many small members over several frames; a byte flipped in a middle
    frame costs only the members in it."""
    env = file_vault
    env.band_size = "64MiB"
    env.extra_config = 'frame_size = "64KiB"\n'  # in [collections.p]
    src = env.add_collection("p")
    content = {}
    for i in range(40):
        data = os.urandom(10_000 + 997 * i)
        write(src / f"f{i:02d}", data, OLD + i)
        content[f"f{i:02d}"] = data
    env.run("init")
    env.run("snapshot")
    (band,) = {band_of(env, d) for d in content.values()}
    vault = env.open_vault()
    try:
        info = next(b for b in vault.catalog.bands() if b.band == band)
        refs = {p: vault.catalog.blob(hashlib.sha256(d).digest()) for p, d in content.items()}
    finally:
        vault.close()
    frames, coff, uoff = [], 0, 0
    for c, u in info.frames:
        frames.append((coff, c, uoff, u))
        coff, uoff = coff + c, uoff + u
    assert len(frames) > 6
    hit = frames[len(frames) // 2]
    path = env.store_dir / band_key(band)
    raw = bytearray(path.read_bytes())
    raw[hit[0] + hit[1] // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    lost = {
        p
        for p, ref in refs.items()
        if ref is not None and ref.offset < hit[2] + hit[3] and ref.offset + ref.size > hit[2]
    }
    assert 0 < len(lost) < 4
    new_nas(env)

    doc = env.json("index", "rebuild", "--from", "scan", "--yes", expect=3)
    assert set(doc["lost_files"]["p@v1"]) == lost
    assert {lb["why"] for lb in doc["lost_blobs"].values()} == {"damaged"}
    assert {lb["band"] for lb in doc["lost_blobs"].values()} == {band}
    fetch_all(env, env.tmp / "back", content, lost)
    env.run("snapshot")  # the sources still have the lost files: v1 is whole again
    fetch_all(env, env.tmp / "back2", content, set())
