"""Damage to the local LMDB catalog itself (issue 17, points 3 and 4).

A flipped bit in a record must never become bytes or a decision: every value carries
a checksum, and a bad one is EIO in the mount, a one-line error elsewhere, and a
reason for ``index rebuild`` to fall to the store. A truncated ``data.mdb`` must be
a one-line error, not SIGBUS, and ``index rebuild`` recovers without mapping it.
The damage is done to the bytes of ``data.mdb`` found by searching the file, as a
failing disk would do it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from tests.mounts import is_mounted, mount_log, mounted
from tests.trees import diff_r, write
from tests.vaultenv import VaultEnv

BIG = 600_000  # > 101 pages of 4 KiB: `dd bs=4096 skip=100` reads inside it
REBUILD = "vaultfs index rebuild"


def data_mdb(env: VaultEnv) -> Path:
    return env.state_dir / "catalog.lmdb" / "data.mdb"


def blob_record_at(mdb: Path, content: bytes) -> int:
    """Where in data.mdb the blobs database holds the record of `content`: the key (its
    SHA-256) followed by the packed offset and size (the raw id also ends files rows)."""
    data, blob = mdb.read_bytes(), hashlib.sha256(content).digest()
    at = data.find(blob)
    while at >= 0:
        _, size = struct.unpack_from(">QQ", data, at + 32)
        if size == len(content):
            return at + 32
        at = data.find(blob, at + 1)
    raise AssertionError("blob record not found in data.mdb")


def flip_bit(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed cleanly (no signal, no traceback)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


def test_flipped_blob_offset_is_eio_in_the_mount(file_vault: VaultEnv, tmp_path: Path) -> None:
    file_vault.band_size = "1MiB"
    src = file_vault.add_collection("photos")
    big = os.urandom(BIG)
    write(src / "big.bin", big)
    write(src / "other.bin", os.urandom(300_000))
    file_vault.run("init")
    file_vault.run("snapshot")
    mdb = data_mdb(file_vault)
    # Bit 1 of the offset's second-lowest byte: the blob seems to start 512 bytes away,
    # still inside the band, so an unchecked record serves other bytes.
    flip_bit(mdb, blob_record_at(mdb, big) + 6, 1)
    mnt = tmp_path / "mnt"
    with mounted(file_vault, mnt):
        dd = subprocess.run(
            ["dd", f"if={mnt / 'photos/latest/big.bin'}", "of=/dev/null", "bs=4096", "skip=100", "count=1"],
            capture_output=True,
            text=True,
        )
        assert dd.returncode != 0 and "Input/output error" in dd.stderr, dd
    log = mount_log(file_vault).read_text()
    assert any("blob record" in line and REBUILD in line and "EIO" in line for line in log.splitlines()), log
    proc = file_vault.run("restore", "fetch", "photos", "--to", str(tmp_path / "bad"), expect=None)
    assert proc.returncode == 1 and "blob record" in proc.stderr and REBUILD in proc.stderr
    assert not (tmp_path / "bad" / "big.bin").exists()
    out = file_vault.json("check", expect=1)
    assert any("blob record" in p["what"] for p in out["problems"]), out
    rebuilt = file_vault.json("index", "rebuild")
    assert rebuilt["rung"] == "index" and rebuilt["versions"] == ["photos@v1"]
    assert any("rung 1" in w and "blob record" in w for w in rebuilt["why"]), rebuilt["why"]
    assert list(file_vault.state_dir.glob("catalog.lmdb.damaged-*"))
    with mounted(file_vault, mnt):
        dd_ok = subprocess.run(
            ["dd", f"if={mnt / 'photos/latest/big.bin'}", "of=/dev/stdout", "bs=4096", "skip=100", "count=1"],
            capture_output=True,
        )
        assert dd_ok.returncode == 0 and dd_ok.stdout == big[409600 : 409600 + 4096]
    file_vault.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"))
    assert diff_r(src, tmp_path / "out") == []
    file_vault.run("check")


def test_damaged_files_cache_row_never_becomes_a_version(file_vault: VaultEnv, tmp_path: Path) -> None:
    """A files-cache row whose blob id changed (a few flipped bits) would make the next
    version's file point at other content; its checksum stops the snapshot instead."""
    src = file_vault.add_collection("docs")
    a, b = os.urandom(5000), os.urandom(7000)
    write(src / "a.txt", a)
    write(src / "b.txt", b)
    file_vault.run("init")
    file_vault.run("snapshot")
    mdb = data_mdb(file_vault)
    data = bytearray(mdb.read_bytes())
    row = data.index(b"docs\0a.txt") + len(b"docs\0a.txt")  # the key, then its value
    blob_at = row + struct.calcsize(">QQQqq")
    assert data[blob_at : blob_at + 32] == hashlib.sha256(a).digest()
    data[blob_at : blob_at + 32] = hashlib.sha256(b).digest()
    mdb.write_bytes(bytes(data))
    write(src / "new.txt", b"a change, so that a version is made")
    error = one_line_error(file_vault.run("snapshot", expect=None))
    assert "files cache row 'docs/a.txt'" in error and REBUILD in error
    assert [v["version"] for v in file_vault.versions("docs")] == [1]
    file_vault.run("index", "rebuild")
    file_vault.run("snapshot")
    file_vault.run("restore", "fetch", "docs", "--to", str(tmp_path / "out"))
    assert (tmp_path / "out" / "a.txt").read_bytes() == a
    assert diff_r(src, tmp_path / "out") == []


@pytest.mark.parametrize("cut", ["half", "odd"])
def test_truncated_data_mdb_is_an_error_and_rebuilt(file_vault: VaultEnv, tmp_path: Path, cut: str) -> None:
    src = file_vault.add_collection("photos")
    for i in range(300):  # enough records that data.mdb spans many pages
        write(src / f"d{i % 7}/f{i}.txt", f"file {i}\n".encode() * 20)
    file_vault.run("init")
    file_vault.run("snapshot")
    subprocess.run(["cp", "-a", str(src), str(tmp_path / "v1")], check=True)
    write(src / "d0/later.txt", b"in v2")
    file_vault.run("snapshot")
    mdb = data_mdb(file_vault)
    size = mdb.stat().st_size // 2 + (1234 if cut == "odd" else 0)
    os.truncate(mdb, size)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for args in (
        ["versions", "photos"],
        ["snapshot"],
        ["check"],
        ["mount", str(mnt), "--log", str(tmp_path / "mount.log")],
    ):
        proc = file_vault.run(*args, expect=None)
        assert proc.returncode not in (-signal.SIGBUS, 128 + signal.SIGBUS), (args, proc)
        error = one_line_error(proc)
        assert "truncated" in error and REBUILD in error, (args, error)
    assert not is_mounted(mnt)
    rebuilt = file_vault.json("index", "rebuild")
    assert rebuilt["versions"] == ["photos@v1", "photos@v2"]
    assert any("rung 1" in w and "truncated" in w for w in rebuilt["why"]), rebuilt["why"]
    [aside] = file_vault.state_dir.glob("catalog.lmdb.damaged-*")
    assert (aside / "data.mdb").stat().st_size == size  # kept as it was, not deleted
    assert [v["version"] for v in file_vault.versions("photos")] == [1, 2]
    file_vault.run("check")
    file_vault.run("restore", "fetch", "photos@v1", "--to", str(tmp_path / "out"))
    assert diff_r(tmp_path / "v1", tmp_path / "out") == []
    write(src / "d1/after.txt", b"after the rebuild")
    assert file_vault.json("snapshot")["collections"][0]["version"] == 3


def test_truncated_data_mdb_with_from_is_kept_too(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("photos")
    write(src / "a.txt", b"a")
    file_vault.run("init")
    file_vault.run("snapshot")
    mdb = data_mdb(file_vault)
    os.truncate(mdb, 4096 * 3)
    rebuilt = file_vault.json("index", "rebuild", "--from", "sidecars")
    assert rebuilt["versions"] == ["photos@v1"]
    [aside] = file_vault.state_dir.glob("catalog.lmdb.damaged-*")
    assert any(aside.name in n for n in rebuilt["notes"]), rebuilt["notes"]
    assert (aside / "data.mdb").stat().st_size == 4096 * 3
    file_vault.run("check")


def test_format_1_catalog_asks_for_a_rebuild(file_vault: VaultEnv, tmp_path: Path) -> None:
    """A catalog written before records had checksums is not trusted: one line, then
    ``index rebuild`` (rung 1 refuses it too) gives a format-2 catalog."""
    src = file_vault.add_collection("photos")
    write(src / "a.txt", b"a")
    file_vault.run("init")
    file_vault.run("snapshot")
    vault = file_vault.open_vault()
    try:  # what an older vaultfs wrote: the bare format, no checksum
        with vault.catalog.env.begin(write=True) as txn:
            txn.put(b"format", b"1", db=vault.catalog.db["meta"])
    finally:
        vault.close()
    error = one_line_error(file_vault.run("versions", "photos", expect=None))
    assert "format 1" in error and REBUILD in error
    rebuilt = file_vault.json("index", "rebuild")
    assert any("rung 1" in w and "format 1" in w for w in rebuilt["why"]), rebuilt["why"]
    assert [v["version"] for v in file_vault.versions("photos")] == [1]
    file_vault.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"))
    assert diff_r(src, tmp_path / "out") == []


def test_damaged_tree_is_eio_in_the_mount(file_vault: VaultEnv, tmp_path: Path) -> None:
    """The mount lists directories from the catalog's trees: one whose bytes no longer
    hash to its id is EIO, not a listing with a renamed entry."""
    src = file_vault.add_collection("photos")
    write(src / "sub/keep.txt", b"kept")
    file_vault.run("init")
    file_vault.run("snapshot")
    mdb = data_mdb(file_vault)
    data = bytearray(mdb.read_bytes())
    name = data.index(b'"name":"keep.txt"') + len(b'"name":"')
    data[name] = ord("X")  # the entry would be listed as Xeep.txt
    mdb.write_bytes(bytes(data))
    mnt = tmp_path / "mnt"
    with mounted(file_vault, mnt):
        ls = subprocess.run(["ls", str(mnt / "photos/latest/sub")], capture_output=True, text=True)
        assert ls.returncode != 0 and "Input/output error" in ls.stderr, ls
        assert "Xeep.txt" not in ls.stdout
    assert any(
        "tree" in line and "corrupt" in line and REBUILD in line
        for line in mount_log(file_vault).read_text().splitlines()
    )


def test_damaged_lost_blob_record_is_a_clear_error(file_vault: VaultEnv) -> None:
    """A record of the `lost` table is sealed like every other: a changed byte is a one-line
    error asking for a rebuild (never a wrong reason, never a traceback), and the rebuild
    records the loss again from the store."""
    from tests.test_restore_missing import band_of, delete_object
    from vaultfs.model import band_key

    file_vault.band_size = "1MiB"
    src = file_vault.add_collection("docs")
    gone = os.urandom(600_000)
    write(src / "gone.raw", gone)
    write(src / "kept.raw", os.urandom(600_000))
    file_vault.run("init")
    file_vault.run("snapshot")
    delete_object(file_vault, band_key(band_of(file_vault, gone)))
    (src / "gone.raw").unlink()
    file_vault.run("snapshot", expect=3)  # the band is found missing: its blob is recorded lost
    assert [v["lost_files"] for v in file_vault.versions("docs")] == [1, 0]
    mdb = data_mdb(file_vault)
    data = bytearray(mdb.read_bytes())
    at = data.index(b'"why": "missing"') + len(b'"why": "')
    data[at : at + 7] = b"damaged"  # the same length: only the seal can tell
    mdb.write_bytes(bytes(data))
    error = one_line_error(file_vault.run("versions", "docs", expect=None))
    assert "lost-blob record" in error and REBUILD in error
    file_vault.run("index", "rebuild", expect=3)  # rebuilt; the file's bytes are still gone
    assert [v["lost_files"] for v in file_vault.versions("docs")] == [1, 0]


def test_damaged_scrub_row_reads_as_never_verified_not_as_a_damaged_catalog(file_vault: VaultEnv) -> None:
    """Scrub rows are this machine's bookkeeping (catalog/schema.py): a damaged one reads as
    absent — its file counts as never verified until the next scrub writes the row anew —
    and neither `check` nor rung 1 of `index rebuild` calls the catalog damaged for it."""
    src = file_vault.add_collection("photos")
    content = {f"img{i}.raw": os.urandom(20_000) for i in range(3)}
    for name, body in content.items():
        write(src / name, body)
    file_vault.run("init")
    file_vault.run("snapshot")  # it read every file: a scrub row (verified now) for each
    assert file_vault.json("scrub", "--status")["collections"][0]["verified_files"] == 3
    mdb = data_mdb(file_vault)
    data = bytearray(mdb.read_bytes())
    key, blob = b"photos\0img1.raw", hashlib.sha256(content["img1.raw"]).digest()
    rows = []  # where a scrub row's value starts: verified_ns (8 bytes), then the blob
    at = data.find(key)  # (a files-cache row has the same key, and its blob at +40)
    while at >= 0:
        if data.startswith(blob, at + len(key) + 8):
            rows.append(at + len(key))
        at = data.find(key, at + 1)
    assert rows
    for at in rows:  # every copy LMDB left in the file, the live page among them
        data[at + 3] ^= 0x10  # verified_ns off by years: only the seal can tell
    mdb.write_bytes(bytes(data))

    assert file_vault.json("check")["problems"] == []
    status = file_vault.json("scrub", "--status")["collections"][0]
    assert (status["verified_files"], status["never_verified_files"]) == (2, 1)
    assert file_vault.json("index", "rebuild")["rung"] == "lmdb"  # the live catalog, kept
    scrubbed = file_vault.json("scrub", "--max-bytes", "1")  # the never-verified file comes first
    assert scrubbed["verified_files"] == 1 and scrubbed["rot"] == []
    status = file_vault.json("scrub", "--status")["collections"][0]
    assert (status["verified_files"], status["never_verified_files"]) == (3, 0)
