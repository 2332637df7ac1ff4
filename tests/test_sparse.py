"""Sparse files: holes are not read, not stored, restored as holes (docs/snapshots.md).

Sources live under pytest's tmp_path; the test asserts that the filesystem there really
made holes (few blocks allocated) before it trusts anything else.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

from tests.mounts import mounted
from tests.test_index import second_machine
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs import band as bandfmt
from vaultfs.band.tar import MemberMeta
from vaultfs.model import BlobId, ContentKey, Entry, encode_tree, encode_tree_reference

GIB = 1 << 30
# (offset, data) pieces: a data block at the start, one in the middle, one ending the file.
BIG_SIZE = 10 * GIB
SMALL_SIZE = 64 << 20  # small enough to `cmp` in full (ends in a hole)


def pieces(size: int, ends_with_data: bool) -> list[tuple[int, bytes]]:
    out = [(0, b"HEAD" + os.urandom(4092)), (size // 3, os.urandom(12_288))]
    if ends_with_data:
        out.append((size - 5, b"tail!"))
    return out


def make_sparse(path: Path, size: int, data: list[tuple[int, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, chunk in data:
            f.seek(off)
            f.write(chunk)
    assert path.stat().st_blocks * 512 < 1 << 20, "the test filesystem made no holes"
    return path


def data_map(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each data extent, as SEEK_DATA/SEEK_HOLE report them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos, out = os.fstat(fd).st_size, 0, []
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                assert e.errno == errno.ENXIO
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end - start))
            pos = end
        return out
    finally:
        os.close(fd)


def allocated(path: Path) -> int:
    return int(
        subprocess.run(["du", "--block-size=1", str(path)], capture_output=True, text=True).stdout.split()[0]
    )


def same_pieces(path: Path, data: list[tuple[int, bytes]], size: int) -> None:
    assert path.stat().st_size == size
    with open(path, "rb") as f:
        for off, chunk in data:
            f.seek(off)
            assert f.read(len(chunk)) == chunk


def sparse_source(env: VaultEnv) -> tuple[Path, list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    src = env.add_collection("vms", tier="warm")  # warm: bands stay readable on S3
    big = pieces(BIG_SIZE, ends_with_data=True)
    small = pieces(SMALL_SIZE, ends_with_data=False)
    make_sparse(src / "disk" / "big.img", BIG_SIZE, big)
    make_sparse(src / "disk" / "small.img", SMALL_SIZE, small)
    make_sparse(src / "disk" / "holes-only.img", 100 << 20, [])
    write(src / "disk" / "dense.txt", b"plain\n" * 100)
    return src, big, small


def test_a_sparse_file_is_stored_as_its_data_and_restored_sparse(vault_env: VaultEnv, tmp_path: Path) -> None:
    src, big, _ = sparse_source(vault_env)
    data = sum(n for _, n in data_map(src / "disk" / "big.img")) + sum(
        n for _, n in data_map(src / "disk" / "small.img")
    )
    vault_env.run("init")
    run = vault_env.json("snapshot")["collections"][0]
    # Only the data extents were read and stored: not 10 GiB of zeros.
    assert run["bytes_read"] == data + 600 < 1 << 20
    assert run["stats"]["bytes_added"] == data + 600
    assert run["stats"]["bytes"] == BIG_SIZE + SMALL_SIZE + (100 << 20) + 600
    out = tmp_path / "out"
    vault_env.run("restore", "fetch", "vms", "--to", str(out))
    for name in ("big.img", "small.img", "holes-only.img"):
        restored, source = out / "disk" / name, src / "disk" / name
        assert restored.stat().st_size == source.stat().st_size
        assert allocated(restored) <= allocated(source) < 1 << 20, name
        assert data_map(restored) == data_map(source), name
        assert restored.stat().st_mtime_ns == source.stat().st_mtime_ns
    same_pieces(out / "disk" / "big.img", big, BIG_SIZE)
    subprocess.run(["cmp", str(src / "disk" / "small.img"), str(out / "disk" / "small.img")], check=True)
    assert (out / "disk" / "dense.txt").read_bytes() == b"plain\n" * 100
    # check --read-data and check --source understand sparse entries: nothing to say.
    assert vault_env.json("check", "--read-data")["problems"] == []
    source = vault_env.json("check", "--source", "vms")["source"]
    assert source["bitrot_suspected"] == [] and source["modified"] == [] and source["hashed"] == 4


def test_the_band_extracts_a_sparse_file_with_tar(file_vault: VaultEnv, tmp_path: Path) -> None:
    src, big, _ = sparse_source(file_vault)
    file_vault.run("init")
    file_vault.run("snapshot")
    (key,) = [k for k in file_vault.store_keys("bands/") if k.endswith(".tar.zst")]
    x = tmp_path / "x"
    x.mkdir()
    proc = subprocess.run(
        f"zstd -dc {file_vault.store_dir / key} | tar -x -C {x}", shell=True, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for name in ("big.img", "small.img", "holes-only.img"):
        extracted, source = x / "vms" / "disk" / name, src / "disk" / name
        assert extracted.stat().st_size == source.stat().st_size
        assert allocated(extracted) < 1 << 20
    same_pieces(x / "vms" / "disk" / "big.img", big, BIG_SIZE)
    subprocess.run(
        ["cmp", str(src / "disk" / "small.img"), str(x / "vms" / "disk" / "small.img")], check=True
    )
    assert not list(x.rglob("GNUSparseFile*"))  # tar used the real names


def test_the_mount_serves_holes_as_zeros_and_data_where_it_was(file_vault: VaultEnv, tmp_path: Path) -> None:
    src, big, _ = sparse_source(file_vault)
    file_vault.run("init")
    file_vault.run("snapshot")
    with mounted(file_vault, tmp_path / "mnt") as mnt:
        disk = mnt / "vms" / "latest" / "disk"
        assert (disk / "big.img").stat().st_size == BIG_SIZE
        # `du` adds up the data only, as on the source (SEEK_HOLE itself: docs/mount.md).
        assert allocated(disk / "big.img") < 1 << 20
        with open(disk / "big.img", "rb") as f:
            f.seek(5 * GIB)
            assert f.read(1 << 20) == bytes(1 << 20)  # a hole
            off, chunk = big[1]
            f.seek(off - 100)  # across a hole's end into data and out again
            assert f.read(len(chunk) + 200) == bytes(100) + chunk + bytes(100)
            f.seek(BIG_SIZE - 10)
            assert f.read(100) == bytes(5) + b"tail!"
        # Read in order from the start: verified against the blob's SHA-256 at its end.
        subprocess.run(["cmp", str(src / "disk" / "small.img"), str(disk / "small.img")], check=True)
        copy = tmp_path / "copy.img"
        subprocess.run(["cp", "--sparse=always", str(disk / "small.img"), str(copy)], check=True)
        assert allocated(copy) < 1 << 20
        assert (disk / "holes-only.img").read_bytes() == bytes(100 << 20)


def test_an_unchanged_sparse_file_keeps_its_map_in_the_files_cache(
    file_vault: VaultEnv, tmp_path: Path
) -> None:
    src, big, _ = sparse_source(file_vault)
    file_vault.run("init")
    file_vault.run("snapshot")
    write(src / "disk" / "new.txt", b"a change in the same directory\n")  # its listing is rebuilt
    run = file_vault.json("snapshot")["collections"][0]
    assert run["version"] == 2 and run["files_read"] == 1  # big.img came from the files cache
    out = tmp_path / "out"
    file_vault.run("restore", "fetch", "vms@v2", "--to", str(out))
    assert allocated(out / "disk" / "big.img") < 1 << 20
    same_pieces(out / "disk" / "big.img", big, BIG_SIZE)
    assert data_map(out / "disk" / "big.img") == data_map(src / "disk" / "big.img")


def test_bit_rot_in_a_sparse_file_is_found_in_its_data_and_its_holes(file_vault: VaultEnv) -> None:
    src, _, small = sparse_source(file_vault)
    file_vault.run("init")
    file_vault.run("snapshot")
    small_img, big_img = src / "disk" / "small.img", src / "disk" / "big.img"
    for path, offset in ((small_img, small[1][0] + 7), (big_img, 7 * GIB)):  # a data byte; a hole
        st = path.stat()
        with open(path, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x01]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = file_vault.json("check", "--source", "vms", expect=1)["source"]
    assert out["bitrot_suspected"] == ["disk/big.img", "disk/small.img"]


def test_a_rebuild_from_a_scan_of_the_bands_keeps_sparse_files(file_vault: VaultEnv, tmp_path: Path) -> None:
    _, big, _ = sparse_source(file_vault)
    file_vault.run("init")
    file_vault.run("snapshot")
    nas = second_machine(file_vault, tmp_path / "nas2")
    out = nas.json("index", "rebuild", "--from", "scan")
    assert out["rung"] == "scan" and out["problems"] == [], out
    nas.run("check", "--read-data")
    restored = tmp_path / "restored"
    nas.run("restore", "fetch", "vms", "--to", str(restored))
    assert allocated(restored / "disk" / "big.img") < 1 << 20
    same_pieces(restored / "disk" / "big.img", big, BIG_SIZE)


def test_a_sparse_map_spanning_frames_is_found_by_a_band_scan(tmp_path: Path) -> None:
    """A map of many extents, written with tiny frames so it straddles several: the
    scanner (check --read-data, rebuild rung 5) still finds the blob after it."""
    extents = tuple((i * 8192, 512) for i in range(300))
    blob = os.urandom(512 * 300)
    digest = hashlib.sha256(blob).digest()
    path = tmp_path / "b.tar.zst"
    meta = MemberMeta(0o644, 0, 0, 0, sparse=(300 * 8192, extents))
    with bandfmt.BandWriter(path, bandfmt.new_band_id(), frame_size=1024, threads=1) as w:
        w.add_blob(b"c/sparse.img", meta, blob, digest)
        w.add_blob(b"c/after.txt", MemberMeta(0o644, 0, 0, 0), b"after", hashlib.sha256(b"after").digest())
        closed = w.close({})
    scanned = bandfmt.scan_band_file(path, closed.band_id)
    assert sorted(scanned.blobs) == sorted((b.sha256, b.offset, b.size) for b in closed.blobs)
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(f"zstd -dc {path} | tar -x -C {x}", shell=True, check=True)
    got = (x / "c" / "sparse.img").read_bytes()
    assert len(got) == 300 * 8192
    assert b"".join(got[o : o + n] for o, n in extents) == blob


def test_a_dense_entry_keeps_its_tree_id_and_a_sparse_one_round_trips() -> None:
    dense = Entry(name=b"a", kind="file", size=5, blob=BlobId(bytes(32)))
    assert b"sparse" not in encode_tree([dense])
    for sparse in ((), ((0, 512), (1 << 40, 4096))):
        e = Entry(name=b"d.img", kind="file", size=2 << 40, blob=BlobId(bytes(32)), sparse=sparse)
        assert encode_tree([dense, e]) == encode_tree_reference([dense, e])
        assert Entry.from_json(e.to_json()) == e


def test_a_sparse_file_grown_or_with_its_data_moved_is_modified_and_pins(file_vault: VaultEnv) -> None:
    """The blob of a sparse file is only its data, so the same blob with another size or
    data map is other content: a cold collection warns, and the version before is pinned
    (keep_versions = 1 keeps it) and still gives back the old size and layout."""
    src = file_vault.add_collection("vms")  # cold
    data = os.urandom(4096)
    grown = make_sparse(src / "grown.img", 1 << 20, [(0, data)])
    moved = make_sparse(src / "moved.img", 1 << 20, [(0, data)])
    file_vault.extra_config = "keep_versions = 1\n"
    file_vault.write_config()
    file_vault.run("init")
    file_vault.run("snapshot")
    subprocess.run(["truncate", "-s", "2M", str(grown)], check=True)
    moved.unlink()
    make_sparse(moved, 1 << 20, [(512 << 10, data)])  # the same bytes, elsewhere
    snap = file_vault.run("snapshot", expect=3)
    assert "2 file(s) modified" in snap.stderr
    assert "modified: grown.img" in snap.stderr and "modified: moved.img" in snap.stderr
    assert "v1 keeps the old content and is pinned" in snap.stderr
    rows = file_vault.versions("vms")
    assert [r["version"] for r in rows] == [1, 2] and rows[1]["changed"] == 2
    assert rows[0]["pinned"]["replaced"] == ["grown.img", "moved.img"]
    out = file_vault.tmp / "v1"
    file_vault.run("restore", "fetch", "vms@v1", "--to", str(out))
    assert (out / "grown.img").stat().st_size == 1 << 20
    assert data_map(out / "moved.img") == [(0, 4096)]
    same_pieces(out / "moved.img", [(0, data)], 1 << 20)


def test_content_key_is_the_blob_for_a_dense_file_and_adds_size_and_map_for_a_sparse_one() -> None:
    """Dense keys stay the blob id (scrub rows written before keep counting); a sparse
    file's key changes with its size or map even when its blob does not."""
    blob = BlobId(hashlib.sha256(b"data").digest())
    assert Entry(name=b"a", kind="file", size=4, blob=blob).content_key == bytes(blob)
    keys = {
        Entry(name=b"a", kind="file", size=size, blob=blob, sparse=sparse).content_key
        for size, sparse in ((1 << 20, ((0, 4096),)), (2 << 20, ((0, 4096),)), (1 << 20, ((8192, 4096),)))
    }
    assert len(keys) == 3 and ContentKey(blob) not in keys
