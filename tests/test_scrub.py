"""`vaultfs scrub`: re-reading cold collections finds bit rot a snapshot cannot see.

The main test rots a file for real: an ext4 image on a loop device, one byte flipped in
the image under the filesystem, so the file's size, times and inode stay as they were.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.moto_server import S3Bucket
from tests.test_archive import PRICES
from tests.test_bad_input import file_vault_cmd
from tests.test_sparse import GIB, data_map, make_sparse, pieces
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.output import human_bytes

PHOTO = "2019/IMG_1.CR2"


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def flip_keeping_mtime(path: Path, offset: int) -> None:
    """A byte changed with the size and mtime kept: to a scrub (which judges by size and
    mtime, as `check --source` does), rot; a snapshot would see the ctime move."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class Ext4Volume:
    """An ext4 image on a loop device, mounted at `mnt`. One loop device for its whole life:
    files keep their st_dev across a remount, as a NAS disk does across a reboot (the
    directory memo includes it)."""

    def __init__(self, tmp: Path) -> None:
        self.image, self.mnt = tmp / "disk.img", tmp / "mnt"
        self.mnt.mkdir()
        sh("truncate", "-s", "32M", str(self.image))
        sh("mkfs.ext4", "-q", "-F", str(self.image))
        self.loop = sh("losetup", "--find", "--show", str(self.image)).strip()
        self.mounted = False
        self.mount()

    def mount(self) -> None:
        sh("mount", self.loop, str(self.mnt))
        self.mounted = True

    def umount(self) -> None:
        sh("umount", str(self.mnt))
        self.mounted = False

    def rot(self, path: str, offset: int) -> None:
        """Flip one byte of the file at `path` (inside the volume) in the image, under the
        filesystem: no inode is touched, so its size, times and inode stay as they were."""
        self.umount()
        block_size = int(re.findall(r"Block size:\s+(\d+)", sh("dumpe2fs", "-h", str(self.image)))[0])
        logical, within = divmod(offset, block_size)
        physical = int(sh("debugfs", "-R", f"bmap /{path} {logical}", str(self.image)).split()[-1])
        with open(self.image, "r+b") as f:
            f.seek(physical * block_size + within)
            byte = f.read(1)[0]
            f.seek(physical * block_size + within)
            f.write(bytes([byte ^ 0x01]))
            os.fsync(f.fileno())
        self.mount()

    def close(self) -> None:
        if self.mounted:
            self.umount()
        sh("losetup", "-d", self.loop)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Ext4Volume]:
    volume = Ext4Volume(tmp_path)
    try:
        yield volume
    finally:
        volume.close()


def stat_data(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def test_block_level_rot_on_ext4_is_found_and_the_good_copy_fetched(
    file_vault: VaultEnv, ext4: Ext4Volume
) -> None:
    env, tmp = file_vault, file_vault.tmp
    src = ext4.mnt / "photos"
    good = os.urandom(200_000)
    write(src / PHOTO, good)
    write(src / "2019/IMG_2.CR2", os.urandom(150_000))
    write(src / "notes.txt", b"trip notes\n" * 50)
    env.collections["photos"] = (src, "cold")
    env.write_config()
    env.run("init")
    env.run("snapshot")
    before = stat_data(src / PHOTO)

    ext4.rot(f"photos/{PHOTO}", 3 * 4096 + 17)
    assert stat_data(src / PHOTO) == before
    assert (src / PHOTO).read_bytes() != good  # the rot is really there

    snap = env.run("snapshot")
    assert "photos: unchanged since v1 by size and times" in snap.stdout

    proc = env.run("scrub", expect=4)
    band = env.json("versions", "photos")["versions"][0]
    assert f"BIT ROT: photos/{PHOTO} has the size and mtime of photos@v1" in proc.stderr
    assert "IMG_2" not in proc.stderr and "notes" not in proc.stderr
    assert "good copy: photos@v1, band " in proc.stderr and band["bands"] == 1
    fetch = re.search(r"get it back: (vaultfs restore fetch .*)", proc.stderr)
    assert fetch is not None
    args = shlex.split(fetch[1])
    assert args[:5] == ["vaultfs", "restore", "fetch", "photos@v1", PHOTO]
    to = args.index("--to")
    args[to + 1] = str(tmp / "rescued")  # the suggested place, moved into the test's directory
    env.run(*args[1:])
    assert (tmp / "rescued" / PHOTO).read_bytes() == good

    status = env.json("scrub", "--status", expect=4)["collections"][0]
    assert [r["path"] for r in status["rot"]] == [PHOTO]
    assert status["verified_files"] == 2 and status["files"] == 3


def _six(env: VaultEnv) -> Path:
    src = env.add_collection("photos")
    for i in range(6):
        write(src / f"img{i}.raw", os.urandom(100_000))
    env.run("init")
    env.run("snapshot")
    return src


def test_coverage_across_runs_least_recently_verified_first(file_vault: VaultEnv) -> None:
    env = file_vault
    src = _six(env)
    # The snapshot read and hashed every file: each counts as verified by it.
    status = env.json("scrub", "--status")["collections"][0]
    assert (status["files"], status["bytes"], status["verified_files"]) == (6, 600_000, 6)
    assert status["coverage_percent"] == 100.0 and status["never_verified_files"] == 0
    # A rebuilt catalog knows nothing about this machine's files: all never verified.
    env.run("index", "rebuild", "--from", "sidecars")
    status = env.json("scrub", "--status")["collections"][0]
    assert status["verified_files"] == 0 and status["never_verified_files"] == 6
    assert status["oldest_verified"] is None and status["coverage_percent"] == 0.0
    assert "oldest verification: never (6 file(s) never verified)" in env.run("scrub", "--status").stdout

    flip_keeping_mtime(src / "img4.raw", 5000)  # in the second half: not reached by run 1
    first = env.json("scrub", "--max-bytes", "300000")
    assert (first["planned_files"], first["verified_files"], first["rot"]) == (3, 3, [])
    status = env.json("scrub", "--status")["collections"][0]
    assert (status["verified_files"], status["verified_bytes"], status["coverage_percent"]) == (
        3,
        300_000,
        50.0,
    )
    assert status["never_verified_files"] == 3

    second = env.json("scrub", "--max-bytes", "300000", expect=4)  # the other half, not run 1's again
    assert second["planned_files"] == 3 and second["verified_files"] == 2
    assert [r["path"] for r in second["rot"]] == ["img4.raw"]
    assert second["rot"][0]["version"] == 1 and second["rot"][0]["band"]
    assert second["rot"][0]["restore_fetch"].startswith("vaultfs restore fetch photos@v1 img4.raw --to ")
    status = env.json("scrub", "--status", expect=4)["collections"][0]
    assert (status["verified_files"], status["never_verified_files"]) == (5, 1)
    assert [r["path"] for r in status["rot"]] == ["img4.raw"]
    assert status["oldest_verified"] is not None

    # The rotten file stays first in the queue until it matches again.
    third = env.json("scrub", "--max-bytes", "1", expect=4)
    assert third["planned_files"] == 1 and [r["path"] for r in third["rot"]] == ["img4.raw"]


def test_changed_and_missing_files_are_not_rot(file_vault: VaultEnv) -> None:
    env = file_vault
    src = _six(env)
    write(src / "img1.raw", b"edited")
    (src / "img2.raw").unlink()
    out = env.json("scrub")
    assert out["exit_code"] == 0 and out["rot"] == [] and out["verified_files"] == 4
    assert [c["path"] for c in out["changed"]] == ["img1.raw"]
    assert [m["path"] for m in out["missing"]] == ["img2.raw"]
    proc = env.run("scrub")
    assert "img1.raw changed since the version; the next snapshot takes it" in proc.stdout


def test_scrub_per_snapshot_does_a_slice_and_reports_rot(file_vault: VaultEnv, ext4: Ext4Volume) -> None:
    env = file_vault
    src = ext4.mnt / "photos"
    for i in range(4):
        write(src / f"img{i}.raw", os.urandom(100_000))
    env.collections["photos"] = (src, "cold")
    env.write_config()
    env.run("init")
    env.run("snapshot")
    assert env.json("snapshot")["collections"][0]["scrub"] is None  # off by default
    env.config_path.write_text(
        env.config_path.read_text().replace('tier = "cold"\n', 'tier = "cold"\nscrub_per_snapshot = "50%"\n')
    )
    ext4.rot("photos/img0.raw", 5000)
    out = env.json("snapshot", expect=4)
    coll = out["collections"][0]
    assert coll["unchanged"] and coll["files_read"] == 0  # the snapshot itself saw nothing
    assert coll["scrub"]["planned_files"] == 2 and coll["scrub"]["budget_bytes"] == 200_000
    assert [r["path"] for r in coll["scrub"]["rot"]] == ["img0.raw"]
    # The next slice finds it again: a rotten file stays at the front of the queue.
    proc = env.run("snapshot", expect=4)
    assert "BIT ROT: photos/img0.raw" in proc.stderr
    assert "photos: scrub slice: re-read and hashed 2 of 2 file(s) planned" in proc.stdout
    status = env.json("scrub", "--status", expect=4)["collections"][0]
    assert status["verified_files"] == 3 and [r["path"] for r in status["rot"]] == ["img0.raw"]


def test_a_sparse_file_costs_its_data_not_its_size(file_vault: VaultEnv) -> None:
    """A 10 GiB disk image holding a few KiB of data takes those KiB of a budget (holes are
    checked, not read) and is counted as read so; coverage still counts its size."""
    env = file_vault
    src = env.add_collection("images")
    make_sparse(src / "a.img", 10 * GIB, pieces(10 * GIB, ends_with_data=True))
    write(src / "b.raw", os.urandom(100_000))
    data = sum(n for _, n in data_map(src / "a.img")) + 100_000
    env.run("init")
    env.run("snapshot")
    out = env.json("scrub", "--max-bytes", str(data))  # exactly both files' data
    assert (out["planned_files"], out["verified_files"], out["rot"]) == (2, 2, [])
    assert out["planned_bytes"] == out["read_bytes"] == out["budget_bytes"] == data
    assert "(" + human_bytes(data) + " read of a " in env.run("scrub", "--max-bytes", str(data)).stdout
    status = env.json("scrub", "--status")["collections"][0]
    assert (status["bytes"], status["data_bytes"]) == (10 * GIB + 100_000, data)
    assert status["verified_bytes"] == 10 * GIB + 100_000 and status["coverage_percent"] == 100.0
    assert "of data: holes are not read" in env.run("scrub", "--status").stdout
    # A snapshot's slice is a share of the data too, not of 10 GiB.
    env.config_path.write_text(
        env.config_path.read_text().replace('tier = "cold"\n', 'tier = "cold"\nscrub_per_snapshot = "50%"\n')
    )
    assert env.json("snapshot")["collections"][0]["scrub"]["budget_bytes"] == -(-data // 2)


def test_rot_whose_good_copy_is_archived_says_what_the_restore_costs(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """The band holding the good copy is in Deep Archive (a cold collection's bands move
    there after the snapshot): the report gives the `restore start` line, its cost and how
    long it takes, the figures `restore plan` gives for that file."""
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="1MiB")  # a band per file: full bands are archived
    env.extra_config = PRICES
    src = env.add_collection("photos")
    for i in range(3):
        write(src / f"img{i}.raw", os.urandom(1_200_000))
    env.run("init")
    assert env.json("snapshot")["collections"][0]["archived"] == 3
    flip_keeping_mtime(src / "img1.raw", 777)
    rot = env.json("scrub", expect=4)["rot"]
    assert [r["path"] for r in rot] == ["img1.raw"]
    assert (rot[0]["band_state"], rot[0]["storage_class"]) == ("archived", "DEEP_ARCHIVE")
    plan = env.json("restore", "plan", "photos@v1", "img1.raw")
    assert plan["bands_needed"] == 1
    bulk = plan["tiers"]["Bulk"]  # [s3].restore_tier's default
    assert (
        rot[0]["restore_cost_usd"] == pytest.approx(bulk["cost_usd"], abs=1e-4)
        and rot[0]["restore_cost_usd"] > 0
    )
    assert rot[0]["restore_hours"] == bulk["hours"] == 48
    assert rot[0]["restore_start"] == "vaultfs restore start photos@v1 img1.raw"
    proc = env.run("scrub", expect=4)
    cost = f"~${rot[0]['restore_cost_usd']:.2f}, ready within 48 h"
    assert f"the band is archived: first vaultfs restore start photos@v1 img1.raw ({cost}" in proc.stderr
    # The line works as printed: the restore is requested (moto grants it at once).
    assert len(env.json(*shlex.split(rot[0]["restore_start"])[1:])["requested"]) == 1


def test_an_unreadable_file_gets_a_fetch_line_that_works_as_printed(world_dir: Path) -> None:
    """A file the scrub cannot read (here: its permissions, the scrub run as another user)
    is a warning (exit 3) with the `restore fetch` line, its path shell-quoted."""
    env = VaultEnv(world_dir, f"file://{world_dir / 'store'}")
    src = env.add_collection("photos")
    name = "trip 2019/it's here.raw"
    good = os.urandom(50_000)
    write(src / name, good)
    write(src / "ok.raw", os.urandom(50_000))
    env.run("init")
    env.run("snapshot")
    subprocess.run(["chown", "-R", "65534:65534", str(world_dir)], check=True)
    os.chown(src / name, 0, 0)
    (src / name).chmod(0o000)
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *file_vault_cmd(env), "scrub"],
        capture_output=True,
        text=True,
        env=env.env(HOME=str(world_dir)),
        cwd=world_dir,
    )
    assert proc.returncode == 3, proc.stderr
    warning = re.search(
        r"WARNING: photos/(.*) cannot be read \(Permission denied\).*`(vaultfs restore fetch .*)`",
        proc.stderr,
    )
    assert warning is not None and warning[1] == name, proc.stderr
    args = shlex.split(warning[2])
    assert args[3:5] == ["photos@v1", name]
    args[args.index("--to") + 1] = str(world_dir / "rescued")
    env.run(*args[1:])
    assert (world_dir / "rescued" / name).read_bytes() == good


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("scrub_days = 0", "[collections.photos].scrub_days = 0: must be at least 1"),
        ('scrub_days = "30"', "[collections.photos].scrub_days = '30': expected an integer"),
        (
            "scrub_per_snapshot = 2",
            '[collections.photos].scrub_per_snapshot = 2: expected a percentage such as "2%"',
        ),
        ('scrub_per_snapshot = "150%"', "a percentage runs from 0% to 100%"),
        ('scrub_per_snapshot = "lots"', "expected a percentage"),
    ],
)
def test_bad_scrub_settings_are_one_line_errors(file_vault: VaultEnv, line: str, message: str) -> None:
    file_vault.add_collection("photos")
    text = file_vault.config_path.read_text().replace('tier = "cold"\n', f'tier = "cold"\n{line}\n')
    file_vault.config_path.write_text(text)
    proc = file_vault.run("scrub", expect=2)
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_naming_a_warm_collection_or_a_bad_budget_is_a_usage_error(file_vault: VaultEnv) -> None:
    file_vault.add_collection("docs", tier="warm")
    file_vault.run("init")
    proc = file_vault.run("scrub", "docs", expect=2)
    assert "collection docs is warm: scrub covers cold collections" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "--max-time" in file_vault.run("scrub", "--max-time", "soon", expect=2).stderr
    status = file_vault.run("scrub", "--status", "--max-bytes", "1GiB", expect=2)
    assert status.stderr == (
        "vaultfs: error: --status reads nothing: drop --max-bytes/--max-time, or drop --status to scrub\n"
    )
