"""Flipped bytes in a band, a sidecar, an index object, a version record and the LMDB file:
detected, reported with what they affect, repaired from the next rung where possible, and
never served as data."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.test_index import second_machine
from tests.trees import diff_r, write
from tests.vaultenv import VaultEnv


def setup(env: VaultEnv) -> Path:
    env.band_size = "1MiB"
    src = env.add_collection("photos")
    for i in range(4):
        write(src / f"img{i}.raw", os.urandom(500_000))
    write(src / "notes.txt", b"notes\n" * 100)
    env.run("init")
    env.run("snapshot")
    return src


def obj(env: VaultEnv, key: str) -> Path:
    return env.store_dir / key


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def keys(env: VaultEnv, suffix: str) -> list[str]:
    return [k for k in env.store_keys("bands/") if k.endswith(suffix)]


def restored_never_wrong(src: Path, out: Path) -> list[str]:
    """Every file a restore wrote has the source's bytes; returns the names it did not write."""
    missing = []
    for f in sorted(src.iterdir()):
        got = out / f.name
        if got.exists():
            assert got.read_bytes() == f.read_bytes(), f"wrong bytes served for {f.name}"
        else:
            missing.append(f.name)
    return missing


def test_flipped_band_byte(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = setup(file_vault)
    band = max(keys(file_vault, ".tar.zst"), key=lambda k: obj(file_vault, k).stat().st_size)
    flip(obj(file_vault, band), 2000)  # inside the first data frame
    out = file_vault.json("check", "--read-data", expect=1)
    hits = [p for p in out["problems"] if band.split("/")[1].split(".")[0] in p["what"]]
    assert hits and hits[0]["affects"] == ["photos@v1"], out["problems"]
    proc = file_vault.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"), expect=None)
    assert proc.returncode != 0
    assert len(restored_never_wrong(src, tmp_path / "out")) >= 1


def test_flipped_sidecar(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = setup(file_vault)
    sidecar = keys(file_vault, ".catalog.zst")[0]
    flip(obj(file_vault, sidecar), 20)
    out = file_vault.json("check", expect=1)
    assert any(sidecar in p["what"] and "damaged" in p["what"] for p in out["problems"])
    # A new machine rebuilding from rung 3 falls to that band's tail (rung 4) on its own.
    nas = second_machine(file_vault, tmp_path / "nas2")
    rebuilt = nas.json("index", "rebuild", "--from", "sidecars")
    band_id = sidecar.split("/")[1].removesuffix(".catalog.zst")
    assert rebuilt["band_sources"][band_id] == "tail"
    assert any(band_id in n and "sidecar" in n for n in rebuilt["notes"])
    # ...and rewrites the sidecar from the band's own catalog: everything checks clean.
    assert any(sidecar in r for r in rebuilt["repairs"])
    nas.run("check", "--read-data")
    file_vault.run("check")
    nas.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"))
    assert diff_r(src, tmp_path / "out") == []


def test_flipped_index_object(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = setup(file_vault)
    key = file_vault.store_keys("index/")[0]
    flip(obj(file_vault, key), 200)
    out = file_vault.json("check", expect=1)
    assert any(key in p["what"] and "rung 2" in " ".join(p["affects"]) for p in out["problems"])
    nas = second_machine(file_vault, tmp_path / "nas2")
    rebuilt = nas.json("index", "rebuild")
    assert rebuilt["rung"] == "sidecars"
    assert any("rung 2" in w and key in w for w in rebuilt["why"]), rebuilt["why"]
    assert any("full.zst" in r for r in rebuilt["repairs"])  # a new full index object
    nas.run("check")
    file_vault.run("check")
    nas.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"))
    assert diff_r(src, tmp_path / "out") == []


def test_flipped_version_record(file_vault: VaultEnv, tmp_path: Path) -> None:
    setup(file_vault)
    record = obj(file_vault, "versions/photos/1.json")
    doc = json.loads(record.read_bytes())
    doc["created_ns"] += 1  # still valid JSON: only the cross-check can tell
    record.write_text(json.dumps(doc, indent=1, sort_keys=True))
    out = file_vault.json("check", expect=1)
    assert any("versions/photos/1.json" in p["what"] and "photos@v1" in p["affects"] for p in out["problems"])
    nas = second_machine(file_vault, tmp_path / "nas2")
    rebuilt = nas.json("index", "rebuild", "--from", "sidecars")
    assert any("band catalog's copy" in n for n in rebuilt["notes"]), rebuilt
    assert any("versions/photos/1.json" in r for r in rebuilt["repairs"])
    nas.run("check")
    file_vault.run("check")
    # Garbage instead of JSON: the same path.
    record.write_bytes(b"\x00garbage")
    file_vault.json("check", expect=1)
    file_vault.run("index", "rebuild")
    file_vault.run("check")


def test_damaged_lmdb_values_are_never_served_and_rebuilt(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = setup(file_vault)
    mdb = file_vault.state_dir / "catalog.lmdb" / "data.mdb"
    data = bytearray(mdb.read_bytes())
    at = data.index(b'{"entries":[')
    name = data.index(b'"name":"', at) + len(b'"name":"')
    data[name] = ord("X") if data[name] != ord("X") else ord("Y")  # a tree entry renamed
    mdb.write_bytes(bytes(data))
    out = file_vault.json("check", expect=1)
    assert any("tree" in p["what"] and "corrupt" in p["what"] for p in out["problems"]), out
    proc = file_vault.run("restore", "fetch", "photos", "--to", str(tmp_path / "bad"), expect=None)
    assert proc.returncode == 1 and "index rebuild" in proc.stderr
    rebuilt = file_vault.json("index", "rebuild")
    assert rebuilt["rung"] == "index"
    assert any("rung 1" in w for w in rebuilt["why"])
    assert list(file_vault.state_dir.glob("catalog.lmdb.damaged-*"))  # kept, not deleted
    file_vault.run("check", "--read-data")
    file_vault.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"))
    assert diff_r(src, tmp_path / "out") == []
    write(src / "after.txt", b"after")
    assert file_vault.json("snapshot")["collections"][0]["version"] == 2


def test_unreadable_lmdb_file(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = setup(file_vault)
    mdb = file_vault.state_dir / "catalog.lmdb" / "data.mdb"
    data = bytearray(mdb.read_bytes())
    data[:8192] = bytes(8192)  # both meta pages
    mdb.write_bytes(bytes(data))
    proc = file_vault.run("check", expect=None)
    assert proc.returncode != 0 and "index rebuild" in proc.stderr
    rebuilt = file_vault.json("index", "rebuild")
    assert rebuilt["rung"] == "index" and rebuilt["versions"] == ["photos@v1"]
    file_vault.run("check")
    file_vault.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"))
    assert diff_r(src, tmp_path / "out") == []
