"""Bandwidth limits and the adaptive compression level (issue 16), end to end.

The limits are measured, not mocked: real `vaultfs` commands move real bytes to a
``file://`` store on another filesystem (/dev/shm, so the store copies instead of
hard-linking) and to moto's S3 server, and the test times them. The timetable is
checked with the limiter's clock hook (``limit-clock`` in ``VAULTFS_TESTPOINTS``)
starting just before a switch. ``compression_level = "auto"`` is compared with level 3
on the same data, throttled and not, and its mixed-level bands are read back with
``zstd -dc | tar -x`` and ``check --read-data``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.moto_server import S3Bucket
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.band import read_seek_table
from vaultfs.band.compression import FIXED_WINDOW_LOG
from vaultfs.config import parse_rate_schedule
from vaultfs.snapshot.autolevel import RETRY_AFTER, AutoLevel
from vaultfs.snapshot.files import limited_band_size

MiB = 1024 * 1024


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A directory on another filesystem than tmp_path (tmpfs): a file:// store there copies."""
    path = Path(tempfile.mkdtemp(dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_env(kind: str, tmp: Path, shm: Path, request: pytest.FixtureRequest, name: str = "v") -> VaultEnv:
    """A vault under tmp/name: on S3 (moto), or on a file:// store under `shm`."""
    root = tmp / name
    root.mkdir()
    if kind == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        return VaultEnv.on_s3(root, bucket)
    return VaultEnv(root, f"file://{shm / name}")


def log_text(seed: int, size: int) -> bytes:
    """Log-like text (compressible, and more so at higher zstd levels), deterministic."""
    rng = random.Random(seed)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
        for _ in range(2000)
    ]
    templates = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(300)]
    lines, n, t = [], 0, 1_700_000_000
    while n < size:
        t += rng.randint(0, 3)
        level = rng.choice(("INFO", "WARN", "DEBUG"))
        line = f"{t} {level} [{rng.choice(words)}] {rng.choice(templates)} id={rng.getrandbits(24):06x}\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


def snapshot(env: VaultEnv, *args: str, hook: str | None = None) -> tuple[dict[str, Any], float]:
    """One `vaultfs snapshot --json`: its collection's report and the command's wall time."""
    extra = {"TZ": "UTC"} | ({"VAULTFS_TESTPOINTS": hook} if hook else {})
    began = time.monotonic()
    done = json.loads(env.run("snapshot", "--json", *args, env=env.env(**extra)).stdout)
    return done["collections"][0], time.monotonic() - began


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_limits_keep_a_sustained_rate_within_ten_percent(
    kind: str, tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest
) -> None:
    """10 MiB up at [vault].upload_limit = 1MiB/s takes 10 s (±10 %, measured), and the
    same bytes down with --limit-download 4MiB/s keep to that rate too."""
    env = make_env(kind, tmp_path, shm_dir, request)
    env.vault_extra = 'upload_limit = "1MiB/s"\n'
    src = env.add_collection("media", tier="warm")  # warm: its bands stay readable on S3
    for i in range(5):
        write(src / f"clip{i}.bin", os.urandom(2 * MiB))  # incompressible: 10 MiB to send
    env.run("init")
    report, wall = snapshot(env)
    sent = report["bytes_stored"]
    assert sent > 10 * MiB
    rate = sent / report["upload_seconds"]
    assert 0.9 * MiB <= rate <= 1.1 * MiB, (rate / MiB, report)
    assert wall >= sent / (1.1 * MiB)  # by the test's own clock: never faster than the limit

    began = time.monotonic()
    env.run("restore", "fetch", "media", "--to", str(tmp_path / "out"), "--limit-download", "4MiB/s")
    took = time.monotonic() - began
    assert 10 * MiB / (4.4 * MiB) <= took <= 10 * MiB / (3.6 * MiB) + 2.0, took
    for i in range(5):
        assert (tmp_path / "out" / f"clip{i}.bin").read_bytes() == (src / f"clip{i}.bin").read_bytes()


def test_the_timetable_switches_at_its_time(
    tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest
) -> None:
    """The limiter's clock starts at 11:59:57 (hook) as the command starts: 1MiB/s until
    12:00, then no limit. The upload starts under a second later, so for about 2 s it
    keeps to the limit and then sends the rest of the 8 MiB at once: about 2 s, where
    without the switch it would take 8 s, and without the limit well under one."""
    env = make_env("file", tmp_path, shm_dir, request)
    src = env.add_collection("media")
    for i in range(4):
        write(src / f"clip{i}.bin", os.urandom(2 * MiB))
    env.run("init")
    report, _ = snapshot(
        env, "--limit-upload", "08:00,1MiB/s 12:00,off", hook="limit-clock=2024-03-04T11:59:57Z"
    )
    assert 1.0 <= report["upload_seconds"] <= 4.0, report
    # An hour later the timetable is past the switch: nothing holds the upload back.
    write(src / "more.bin", os.urandom(4 * MiB))
    report, _ = snapshot(
        env, "--limit-upload", "08:00,1MiB/s 12:00,off", hook="limit-clock=2024-03-04T12:59:57Z"
    )
    assert report["upload_seconds"] < 1.0, report


def test_bad_limits_are_one_line_errors(file_vault: VaultEnv) -> None:
    file_vault.add_collection("media")
    file_vault.vault_extra = 'upload_limit = "08:00,1MiB/s 07:00,off"\n'
    file_vault.write_config()
    proc = file_vault.run("snapshot", expect=2)
    assert proc.stderr.count("\n") == 1 and "the times of a timetable must increase (07:00)" in proc.stderr
    file_vault.vault_extra = ""
    file_vault.write_config()
    proc = file_vault.run("snapshot", "--limit-download", "fast", expect=2)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "--limit-download = 'fast': expected a rate such as \"8MiB/s\"" in proc.stderr
    assert parse_rate_schedule("08:00,1MiB/s 23:00,off", "k").rate_at(7 * 3600) is None  # wraps


def with_logs(env: VaultEnv, level: str, band_size: str = "2MiB") -> VaultEnv:
    """`env` at `level` with 24 MiB of log text (1 MiB files), and frames (and by default
    bands) small enough that a short run has many of each."""
    env.band_size = band_size
    env.vault_extra = f"compression_level = {level}\n"
    env.add_collection("logs")
    env.extra_config = 'frame_size = "128KiB"\n'
    env.write_config()
    for i in range(24):
        write(env.collections["logs"][0] / f"app{i:02d}.log", log_text(i, MiB))
    env.run("init")
    return env


def test_auto_on_a_throttled_store_stores_less_in_the_same_time(
    tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest
) -> None:
    """Upload at 2MiB/s: "auto" ends with a smaller store than level 3, in the same wall
    time (±10 %); its bands mix levels, keep level 3's window, extract with zstd and tar,
    and verify."""
    fixed = with_logs(make_env("file", tmp_path, shm_dir, request, "fixed"), "3")
    auto = with_logs(make_env("file", tmp_path, shm_dir, request, "auto"), '"auto"')
    three, three_wall = snapshot(fixed, "--limit-upload", "2MiB/s")
    adaptive, auto_wall = snapshot(auto, "--limit-upload", "2MiB/s")
    assert three["compression_levels"] == [3, 3]
    low, high = adaptive["compression_levels"]
    assert low == 3 and high > 3, adaptive
    assert adaptive["bytes_stored"] < 0.98 * three["bytes_stored"], (adaptive, three)
    assert auto_wall <= 1.1 * three_wall, (auto_wall, three_wall)
    assert auto.versions("logs")[0]["compression_levels"] == [low, high]

    levels_seen: set[int] = set()
    out = tmp_path / "x"
    out.mkdir()
    for key in auto.store_keys("bands/"):
        if not key.endswith(".tar.zst"):
            continue
        band = auto.fetch_object(key, tmp_path / "band.tar.zst")
        raw = band.read_bytes()
        frames = read_seek_table(raw)
        subprocess.run(["sh", "-c", f"zstd -dc '{band}' | tar -x -C '{out}'"], check=True)
        catalog = json.loads((out / ".vaultfs" / "catalog.json").read_bytes())
        runs = catalog["frame_levels"]
        assert sum(count for _, count in runs) == len(frames) - 1  # every data frame has its level
        levels_seen |= {level for level, _ in runs}
        for f in frames:  # no frame needs a larger window than level 3's
            params = zstandard.get_frame_parameters(
                raw[f.compressed_offset : f.compressed_offset + f.compressed_size]
            )
            assert params.window_size <= 1 << FIXED_WINDOW_LOG
    assert len(levels_seen) > 1 and max(levels_seen) == high
    for i in range(24):
        name = f"app{i:02d}.log"
        assert (out / "logs" / name).read_bytes() == (auto.collections["logs"][0] / name).read_bytes()
    auto.run("check", "--read-data")


def test_auto_to_an_unthrottled_local_store_is_level_three(tmp_path: Path) -> None:
    """A store on the spool's filesystem takes each band at once (a hard link): "auto"
    never finds the link to be the bound, and runs as level 3 does. (Bands of 8 MiB: with
    bands of a few MiB the uploader's fsyncs and catalog commit per band make it the
    bound after all, and "auto" rightly raises the level; real bands are 1 GiB.)"""
    (tmp_path / "fixed").mkdir()
    (tmp_path / "auto").mkdir()
    fixed = with_logs(VaultEnv(tmp_path / "fixed", f"file://{tmp_path / 'fixed' / 'store'}"), "3", "8MiB")
    auto = with_logs(VaultEnv(tmp_path / "auto", f"file://{tmp_path / 'auto' / 'store'}"), '"auto"', "8MiB")
    three, three_wall = snapshot(fixed)
    adaptive, auto_wall = snapshot(auto)
    print(
        adaptive["compression_levels"], adaptive["bytes_stored"], three["bytes_stored"], auto_wall, three_wall
    )
    assert adaptive["compression_levels"] == [3, 3], adaptive
    assert adaptive["bytes_stored"] == pytest.approx(three["bytes_stored"], rel=0.001)
    assert auto_wall <= 1.2 * three_wall + 0.2, (auto_wall, three_wall)


def test_progress_names_the_limit_while_it_is_the_bound() -> None:
    """The note progress shows: empty while nothing waited, the limit once it held bytes back."""
    from vaultfs.config import RateSchedule
    from vaultfs.store.limit import Bandwidth, Limiter

    bandwidth = Bandwidth(Limiter(parse_rate_schedule("4MiB/s", "k")), Limiter(RateSchedule()))
    assert bandwidth.note() == ""
    began = time.monotonic()
    bandwidth.up.take(MiB // 2)  # an eighth of a second at the rate: more than a burst
    assert time.monotonic() - began >= 0.1
    assert bandwidth.note() == "upload limit 4MiB/s"


def test_the_mount_reads_within_its_download_limit(file_vault: VaultEnv, tmp_path: Path) -> None:
    """`vaultfs mount --limit-download 1MiB/s`: reading a 3 MiB file through the kernel
    mount takes about 3 s (the mount's ranged reads share the process's bucket)."""
    from tests.mounts import mounted

    src = file_vault.add_collection("photos")
    data = os.urandom(3 * MiB)
    write(src / "big.raw", data)
    file_vault.run("init")
    file_vault.run("snapshot")
    with mounted(file_vault, tmp_path / "mnt", "--limit-download", "1MiB/s") as mnt:
        began = time.monotonic()
        assert (mnt / "photos" / "latest" / "big.raw").read_bytes() == data
        took = time.monotonic() - began
    assert 2.7 <= took <= 3 / 0.9 + 1.5, took


def test_bands_behind_a_limit_are_cut_to_what_the_link_sends() -> None:
    """A first band of 5 s of the link, the others 30 s, never above band_size."""
    mib, gib = 1024**2, 1024**3
    assert limited_band_size(gib, 10 * mib, first=True) == 50 * mib
    assert limited_band_size(gib, 10 * mib, first=False) == 300 * mib
    assert limited_band_size(gib, 100 * mib, first=False) == gib
    assert limited_band_size(gib, 1024, first=True) == 16 * mib  # a floor for crawling links
    assert limited_band_size(2 * mib, 1024, first=False) == 2 * mib  # never above band_size


def test_a_level_measured_too_slow_is_tried_again_and_short_frames_do_not_count() -> None:
    link = 100.0
    auto = AutoLevel(3, 19, 1, lambda: 2.0, lambda: link)  # a backlog of 2 bands: may rise
    auto.compressed(3, 1000, 1000, 1.0)  # level 3 turns out 10x the link
    auto.compressed(4, 1000, 10, 1.0)  # level 4 measured far below it
    assert [auto.next_level() for _ in range(RETRY_AFTER)] == [3] * RETRY_AFTER
    assert auto.next_level() == 4  # measured long ago: tried again

    fresh = AutoLevel(3, 19, 1, lambda: 2.0, lambda: link)
    fresh.compressed(3, 1000, 1000, 1.0)
    fresh.compressed(4, 100, 1, 1.0)  # a band's short last frame: not a measure of level 4
    assert fresh.next_level() == 4
