"""End-to-end: snapshot a tree with every kind of entry, then get it back.

Runs against both stores (file:// and s3:// on moto's HTTP server). Results
are checked with standard tools (diff -r, zstd, tar) and per-entry metadata.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.trees import describe, diff_r, make_every_kind, write
from tests.vaultenv import VaultEnv


def snapshot_and_fetch(env: VaultEnv, name: str, out: Path, *extra: str) -> None:
    env.run("snapshot", name)
    env.run("restore", "fetch", name, "--to", str(out), *extra)


def test_round_trip_every_kind(vault_env: VaultEnv, tmp_path: Path) -> None:
    src = vault_env.add_collection("photos")
    make_every_kind(src)
    vault_env.run("init")
    vault_env.run("snapshot", "photos", expect=0)
    out = tmp_path / "restored"
    proc = vault_env.run("restore", "fetch", "photos", "--to", str(out), expect=3)
    # The socket is the one entry that is recorded but cannot be recreated.
    assert "socket not restored" in proc.stderr
    assert diff_r(src, out, ignore=("Only in " + str(src) + ": socket",)) == []
    assert describe(src, skip_sockets=True) == describe(out)
    # Hard links come back as links, sharing one inode.
    assert os.stat(out / "hard_a").st_ino == os.stat(out / "nested" / "hard_b").st_ino
    assert os.stat(out / "hard_a").st_ino == os.stat(out / "hard_c").st_ino
    assert os.readlink(out / "link_dangling") == "does/not/exist"


def test_versions_and_no_change(vault_env: VaultEnv) -> None:
    src = vault_env.add_collection("docs", tier="warm")
    write(src / "a.txt", b"first\n")
    write(src / "sub" / "b.txt", b"second\n")
    vault_env.run("init")
    first = vault_env.json("snapshot")
    assert first["collections"][0]["version"] == 1
    assert first["collections"][0]["files_read"] == 2
    again = vault_env.json("snapshot")["collections"][0]
    assert again["version"] is None and again["unchanged"] is True
    assert again["files_read"] == 0  # stat only: the files cache knew both
    versions = vault_env.versions("docs")
    assert [v["version"] for v in versions] == [1]
    assert len(versions[0]["verified"]) == 1
    # A change makes v2, with the delta and the time since v1.
    write(src / "c.txt", b"third\n")
    (src / "a.txt").unlink()
    write(src / "sub" / "b.txt", b"second, edited\n")
    third = vault_env.json("snapshot")["collections"][0]
    assert third["version"] == 2
    assert third["files_read"] == 2
    v2 = vault_env.versions("docs")[1]
    assert (v2["added"], v2["changed"], v2["removed"]) == (1, 1, 1)
    assert v2["since_previous_s"] is not None and v2["since_previous_s"] >= 0
    text = vault_env.run("versions", "docs").stdout
    assert "v2" in text and "+1" in text and "~1" in text and "-1" in text


def test_an_unchanged_snapshot_says_what_it_compared(file_vault: VaultEnv) -> None:
    """Honest words: stat data alone is "by size and times", never "verified"; a file read
    again (its ctime moved, nothing else) is said to be re-read and hashed."""
    src = file_vault.add_collection("docs", tier="warm")
    write(src / "a.txt", b"first\n")
    write(src / "b.txt", b"second\n")
    file_vault.run("init")
    file_vault.run("snapshot")
    out = file_vault.run("snapshot").stdout
    assert "docs: unchanged since v1 by size and times; read 0 files" in out
    assert "verified" not in out
    os.chmod(src / "a.txt", (src / "a.txt").stat().st_mode)  # same mode: only ctime moves
    out = file_vault.run("snapshot").stdout
    assert "unchanged since v1 by size and times; 1 file(s) re-read and hashed, same content" in out
    assert "verified" not in out
    listing = file_vault.run("versions", "docs").stdout
    assert "v1 found unchanged at " in listing and "by size and times" in listing
    assert "verified" not in listing


def test_dedup_across_places_and_collections(file_vault: VaultEnv, tmp_path: Path) -> None:
    a = file_vault.add_collection("a")
    b = file_vault.add_collection("b")
    content = os.urandom(200_000)
    write(a / "one.bin", content)
    write(a / "dir" / "same.bin", content)
    write(b / "other.bin", content)
    file_vault.run("init")
    result = file_vault.json("snapshot")["collections"]
    assert result[0]["stats"]["bytes_added"] == len(content)
    assert result[1]["stats"]["bytes_added"] == 0
    assert result[1]["bands"] == 1  # metadata only: the trees and the version record
    # Exactly one tar member in all bands holds that content.
    members = 0
    for key in file_vault.store_keys("bands/"):
        if key.endswith(".tar.zst"):
            band = file_vault.fetch_object(key, tmp_path / "band.tar.zst")
            x = tmp_path / "x"
            shutil.rmtree(x, ignore_errors=True)
            x.mkdir()
            subprocess.run(f"zstd -dc {band} | tar -x -C {x}", shell=True, check=True)
            members += sum(1 for p in x.rglob("*") if p.is_file() and p.read_bytes() == content)
    assert members == 1
    out = tmp_path / "out"
    file_vault.run("restore", "fetch", "b", "--to", str(out))
    assert (out / "other.bin").read_bytes() == content


def test_bands_close_near_band_size(vault_env: VaultEnv, tmp_path: Path) -> None:
    vault_env.band_size = "1MiB"
    src = vault_env.add_collection("media", tier="warm")  # warm: bands stay readable on S3
    for i in range(10):
        write(src / f"clip{i:02}.bin", os.urandom(300_000))
    write(src / "big.bin", os.urandom(3 * 1024 * 1024))
    vault_env.run("init")
    vault_env.run("snapshot")
    sizes = []
    holds_big = 0
    for key in vault_env.store_keys("bands/"):
        if not key.endswith(".tar.zst"):
            continue
        band = vault_env.fetch_object(key, tmp_path / "b.tar.zst")
        listing = subprocess.run(
            f"zstd -dc {band} | tar -tv", shell=True, check=True, capture_output=True, text=True
        ).stdout
        data = sum(
            int(line.split()[2]) for line in listing.splitlines() if ".vaultfs/catalog.json" not in line
        )
        if "big.bin" in listing:
            holds_big += 1
            assert "clip" not in listing  # a file larger than band_size gets a band of its own
        else:
            sizes.append(data)
    assert holds_big == 1
    assert len(sizes) >= 3
    assert all(s <= 1024 * 1024 for s in sizes)
    out = tmp_path / "out"
    vault_env.run("restore", "fetch", "media", "--to", str(out))
    assert diff_r(src, out) == []


def test_standard_tools_extract_every_band(vault_env: VaultEnv, tmp_path: Path) -> None:
    src = vault_env.add_collection("photos")
    write(src / "a" / "one.raw", os.urandom(100_000))
    write(src / "b" / "two.txt", b"text " * 10_000)
    vault_env.run("init")
    vault_env.run("snapshot")
    x = tmp_path / "x"
    x.mkdir()
    for key in vault_env.store_keys("bands/"):
        if key.endswith(".tar.zst"):
            band = vault_env.fetch_object(key, tmp_path / "band.tar.zst")
            proc = subprocess.run(
                f"zstd -dc {band} | tar -x -C {x}", shell=True, capture_output=True, text=True
            )
            assert proc.returncode == 0 and proc.stderr == ""
    assert diff_r(src, x / "photos") == []


def test_restore_subset_and_older_version(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = file_vault.add_collection("photos")
    write(src / "2019" / "a.raw", b"a" * 1000)
    write(src / "2020" / "b.raw", b"b" * 1000)
    file_vault.run("init")
    file_vault.run("snapshot")
    write(src / "2020" / "b.raw", b"B" * 2000)
    file_vault.run("snapshot", expect=3)  # cold: a modified file is warned about
    out = tmp_path / "v1"
    file_vault.run("restore", "fetch", "photos@v1", "2020/b.raw", "--to", str(out))
    assert (out / "2020" / "b.raw").read_bytes() == b"b" * 1000
    assert not (out / "2019").exists()
    missing = file_vault.run("restore", "fetch", "photos@v9", "--to", str(out), expect=2)
    assert "photos@v9 does not exist" in missing.stderr


def test_large_files_dedup_and_moves(file_vault: VaultEnv, tmp_path: Path) -> None:
    """Files above the in-memory limit are read once, and still deduplicated."""
    src = file_vault.add_collection("media")
    video = os.urandom(9 * 1024 * 1024 + 17)
    write(src / "a" / "clip.mp4", video)
    write(src / "b" / "same_clip.mp4", video)
    file_vault.run("init")
    first = file_vault.json("snapshot")["collections"][0]
    assert first["stats"]["bytes_added"] == len(video)
    # A reorganised library: the file moves, keeping its size and mtime.
    (src / "c").mkdir()
    os.rename(src / "a" / "clip.mp4", src / "c" / "moved.mp4")
    second = file_vault.json("snapshot", expect=3)["collections"][0]  # cold: a.clip deleted
    assert second["version"] == 2
    assert second["stats"]["bytes_added"] == 0
    assert second["deleted"] == ["a/clip.mp4"]
    out = tmp_path / "out"
    file_vault.run("restore", "fetch", "media", "--to", str(out))
    assert diff_r(src, out) == []
    stored = sum(
        (tmp_path / "store" / k).stat().st_size
        for k in file_vault.store_keys("bands/")
        if k.endswith(".tar.zst")
    )
    assert len(video) < stored < len(video) + 64 * 1024


def test_copy_of_a_large_file_in_the_same_run_is_recognised(file_vault: VaultEnv) -> None:
    """A large file whose size and both ends match one read earlier in the run is hashed
    before packing (`FileSaver.probable_copy`); one that merely has the same size is not."""
    from vaultfs.config import load_config
    from vaultfs.snapshot import FINGERPRINT_PIECE, SMALL_FILE, Snapshot

    src = file_vault.add_collection("media")
    size = SMALL_FILE + 5  # a large file: streamed, unless probably a copy
    raw = os.urandom(size)
    write(src / "a.raw", raw)
    write(src / "same_size.raw", os.urandom(size))
    write(
        src / "same_ends.raw",  # the middle differs: still "probable", the hash decides
        raw[:FINGERPRINT_PIECE] + os.urandom(size - 2 * FINGERPRINT_PIECE) + raw[-FINGERPRINT_PIECE:],
    )
    write(src / "b" / "copy.raw", raw)
    file_vault.run("init")
    vault = file_vault.open_vault()
    try:
        snap = Snapshot(vault, load_config(file_vault.config_path).collection("media"))
        seen = []
        for name in ("a.raw", "same_size.raw", "b/copy.raw", "same_ends.raw"):
            fd = os.open(src / name, os.O_RDONLY)
            try:
                seen.append(snap.files.probable_copy(fd, os.fstat(fd)))
            finally:
                os.close(fd)
        assert seen == [False, False, True, True]
    finally:
        vault.close()
    out = file_vault.json("snapshot")["collections"][0]  # the real run stores `raw` once
    assert out["stats"]["bytes_added"] == 3 * size


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_run_stops_and_joins_the_uploader(
    file_vault: VaultEnv, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    """The uploader thread is not a daemon: a run that fails after bands were queued
    (also by KeyboardInterrupt) stops and joins it and deletes the band being filled;
    the next run finishes the work."""
    from vaultfs.config import load_config
    from vaultfs.snapshot import Snapshot
    from vaultfs.snapshot.trees import TreeSaver

    file_vault.band_size = "1MiB"
    src = file_vault.add_collection("media", tier="warm")
    for i in range(5):
        write(src / f"clip{i}.bin", os.urandom(400_000))
    file_vault.run("init")

    def fail(self: TreeSaver, node: object) -> None:
        raise error("stop here")

    vault = file_vault.open_vault()
    try:
        collection = load_config(file_vault.config_path).collection("media")
        with monkeypatch.context() as m:
            m.setattr(TreeSaver, "build", fail)
            with pytest.raises(error):
                Snapshot(vault, collection).run()
        assert [t for t in threading.enumerate() if t.name == "vaultfs-upload"] == []
        assert [p.name for p in vault.spool_dir.iterdir() if p.name.endswith(".part")] == []
        result = Snapshot(vault, collection).run()
        assert result.version is not None and result.version.stats.files == 5
        assert [t for t in threading.enumerate() if t.name == "vaultfs-upload"] == []
    finally:
        vault.close()


def test_small_files_read_ahead_while_zstd_is_behind(file_vault: VaultEnv, tmp_path: Path) -> None:
    """While the one compression thread is behind on a large file, the next small files
    are read ahead and packed right after it (in their own order); nothing is lost,
    nothing doubled, and a file too large to read ahead waits for its turn."""
    file_vault.vault_extra = "threads = 1\n"
    file_vault.band_size = "64MiB"
    src = file_vault.add_collection("mixed")
    rng = random.Random(7)
    letters = bytes(b"etaoinshrdlu \n"[i % 14] for i in range(256))

    def text(n: int) -> bytes:  # compresses, but not fast: zstd stays behind the reads
        return rng.randbytes(n).translate(letters)

    from vaultfs.band import FRAME_SIZE_DEFAULT, FRAMES_AHEAD

    # Twice the frames the writer may have in flight: the reads get ahead of zstd.
    write(src / "a_big.txt", text(2 * (1 + FRAMES_AHEAD) * FRAME_SIZE_DEFAULT + 5))
    write(src / "b_big.txt", text(9 * 1024 * 1024 + 7))
    for i in range(200):
        write(src / "c" / f"s{i:03}.txt", text(500 + 37 * i))
    write(src / "c" / "s100_medium.txt", text(300 * 1024))  # above the read-ahead size
    file_vault.run("init")
    # After the scan, one small file grows past the read-ahead size: it is read later.
    proc = file_vault.popen("snapshot", env=file_vault.env(VAULTFS_TESTPOINTS="after-scan=stop"))
    os.waitid(os.P_PID, proc.pid, os.WSTOPPED | os.WNOWAIT)
    write(src / "c" / "s005.txt", text(1024 * 1024))
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    out = tmp_path / "out"
    file_vault.run("restore", "fetch", "mixed", "--to", str(out))
    assert diff_r(src, out) == []
    (band,) = [k for k in file_vault.store_keys("bands/") if k.endswith(".tar.zst")]
    listing = subprocess.run(
        f"zstd -dc {file_vault.store_dir / band} | tar -t",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    members = [m.removeprefix("mixed/") for m in listing if m.startswith("mixed/")]
    assert sorted(members) == sorted(str(p.relative_to(src)) for p in src.rglob("*.txt"))
    small = [m for m in members if m.startswith("c/s") and "medium" not in m]
    assert small == sorted(small)  # read ahead in list order
    # Read ahead: small files of c/ were packed between the two large files.
    assert members.index("a_big.txt") < members.index("c/s000.txt") < members.index("b_big.txt")
