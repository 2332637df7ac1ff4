"""Crashes at many points, flaky and failing stores, and two writers at once.

Every scenario ends with the oracle: `vaultfs check` (clean), a restore compared
with the source, and no half-written objects on the store or in the spool.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_index import second_machine
from tests.trees import diff_r, write
from tests.vaultenv import VaultEnv


def fill(src: Path) -> None:
    for i in range(6):
        write(src / f"d{i % 2}" / f"f{i}.bin", os.urandom(300_000))
    write(src / "big.bin", os.urandom(9 * 1024 * 1024))  # > SMALL_FILE: streamed, "after-hash"


def no_debris(env: VaultEnv) -> None:
    assert list((env.state_dir / "spool").iterdir()) == []
    if env.store_url.startswith("file://"):
        root = env.store_dir
        assert [p for p in root.rglob("*") if p.name.startswith(".vaultfs-tmp-")] == []
    else:
        client = env.bucket.client()
        assert not client.list_multipart_uploads(Bucket=env.bucket.name).get("Uploads")


def verified(env: VaultEnv, src: Path, out: Path) -> None:
    env.run("check", "--read-data")
    env.run("restore", "fetch", "photos", "--to", str(out))
    assert diff_r(src, out) == []
    no_debris(env)


KILL_POINTS = [
    "after-scan",  # scanning done, nothing read
    "after-hash",  # packing: a large file hashed, not yet in a band
    "band-closed#1",  # a band finished in the spool, not uploaded
    "band-uploaded#2",  # some bands on the store
    "before-commit",  # every band uploaded, no version record
    "version-record-written",  # committed on the store, not in LMDB
    "index-publish",  # committed in LMDB, index not updated
    "index-object-written",  # index object on the store, LMDB not told
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_anywhere_then_next_run_completes_and_checks_clean(
    file_vault: VaultEnv, tmp_path: Path, point: str
) -> None:
    file_vault.band_size = "1MiB"
    src = file_vault.add_collection("photos")
    fill(src)
    file_vault.run("init")
    proc = file_vault.run("snapshot", expect=None, env=file_vault.env(VAULTFS_TESTPOINTS=f"{point}=kill"))
    assert proc.returncode == -signal.SIGKILL, (point, proc.stderr)
    committed = point in ("version-record-written", "index-publish", "index-object-written")
    listed = [v["version"] for v in file_vault.versions("photos")]
    assert listed == ([1] if point.startswith("index") else [])  # nothing half-done shows
    out = file_vault.json("snapshot")["collections"][0]
    assert out["latest"] == 1 and out["unchanged"] == committed
    assert [v["version"] for v in file_vault.versions("photos")] == [1]
    verified(file_vault, src, tmp_path / "out")
    # The store alone still rebuilds the whole vault.
    nas = second_machine(file_vault, tmp_path / "nas2")
    assert nas.json("index", "rebuild")["rung"] == "index"
    nas.run("check")


def test_kill_during_multipart_upload_and_index_on_s3(s3_bucket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="32MiB")
    src = env.add_collection("photos", tier="warm")  # warm: bands stay readable on S3
    write(src / "video.bin", os.urandom(11 * 1024 * 1024))  # multipart: 5 MiB parts
    env.run("init")
    for point in ("multipart-part-uploaded#1", "index-publish"):
        write(src / f"{point}.txt", point.encode())
        proc = env.run("snapshot", expect=None, env=env.env(VAULTFS_TESTPOINTS=f"{point}=kill"))
        assert proc.returncode == -signal.SIGKILL
    env.run("snapshot")
    verified(env, src, tmp_path / "out")


@pytest.mark.parametrize("store", ["file", "s3"])
def test_snapshot_through_a_flaky_store(store: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if store == "file":
        env = VaultEnv(tmp_path, f"file://{tmp_path / 'store'}", band_size="1MiB")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        env = VaultEnv.on_s3(tmp_path, bucket, band_size="1MiB")
    src = env.add_collection("photos", tier="warm")  # warm: bands stay readable on S3
    fill(src)
    faulty = env.env(VAULTFS_TESTPOINTS="store-faults=0.3:7")
    env.run("init", env=faulty)
    proc = env.run("--debug", "snapshot", env=faulty)
    assert "injected fault" in proc.stderr  # the faults happened and were retried
    write(src / "more.txt", b"more")
    env.run("snapshot", env=env.env(VAULTFS_TESTPOINTS="store-faults=0.3:8"))
    env.run("check", "--read-data", env=env.env(VAULTFS_TESTPOINTS="store-faults=0.3:9"))
    env.run(
        "restore",
        "fetch",
        "photos",
        "--to",
        str(tmp_path / "out"),
        env=env.env(VAULTFS_TESTPOINTS="store-faults=0.3:10"),
    )
    assert diff_r(src, tmp_path / "out") == []
    nas = second_machine(env, tmp_path / "nas2")
    assert nas.json("index", "rebuild", "--from", "sidecars")["problems"] == []
    nas.run("check")
    no_debris(env)


def test_permanent_store_errors_fail_fast_and_clearly(s3_bucket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = VaultEnv.on_s3(tmp_path, s3_bucket)
    src = env.add_collection("photos")
    write(src / "a.bin", os.urandom(100_000))
    env.run("init")
    env.run("snapshot")
    client = s3_bucket.client()
    # InvalidObjectState: an archived band is not retried, and the message says what to do.
    env.move_bands_to("DEEP_ARCHIVE")
    started = time.monotonic()
    proc = env.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"), expect=None)
    assert proc.returncode != 0 and "archived" in proc.stderr and "restore" in proc.stderr
    # NoSuchBucket: the bucket is gone.
    for key in env.store_keys():
        client.delete_object(Bucket=s3_bucket.name, Key="vault/" + key)
    client.delete_bucket(Bucket=s3_bucket.name)
    write(src / "b.bin", b"new")
    proc = env.run("snapshot", expect=None)
    assert proc.returncode == 2
    assert f"no such bucket {s3_bucket.name}" in proc.stderr
    assert "retry" not in proc.stderr
    assert time.monotonic() - started < 20  # no backoff on permanent errors


def wait_stopped(proc: subprocess.Popen[str]) -> None:
    """Block until the child stops itself (a `NAME=stop` testpoint): no polling, no sleeps."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status


def test_two_snapshots_at_once_on_one_machine(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = file_vault.add_collection("photos")
    fill(src)
    file_vault.run("init")
    first = file_vault.popen("snapshot", env=file_vault.env(VAULTFS_TESTPOINTS="after-scan=stop"))
    try:
        wait_stopped(first)
        second = file_vault.run("snapshot", expect=1)
        assert "another vaultfs process is writing to this vault" in second.stderr
        rebuild = file_vault.run("index", "rebuild", expect=1)
        assert "another vaultfs process" in rebuild.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert [v["version"] for v in file_vault.versions("photos")] == [1]
    verified(file_vault, src, tmp_path / "out")


def test_two_machines_on_one_store(vault_env: VaultEnv, tmp_path: Path) -> None:
    a = vault_env
    src_a = a.add_collection("photos", tier="warm")  # each machine has its own files
    write(src_a / "a.txt", b"from A")
    a.run("init")
    a.run("snapshot")
    b = second_machine(a, tmp_path / "b")
    refused = b.run("init", expect=2)
    assert "index rebuild" in refused.stderr
    b.run("index", "rebuild")
    src_b = b.tmp / "src" / "photos"
    b.collections["photos"] = (src_b, "warm")
    b.write_config()
    write(src_b / "b.txt", b"from B")
    write(src_a / "a2.txt", b"A again")
    racing = a.popen("snapshot", env=a.env(VAULTFS_TESTPOINTS="before-commit=stop"))
    try:
        wait_stopped(racing)
        assert b.json("snapshot")["collections"][0]["version"] == 2
    finally:
        os.kill(racing.pid, signal.SIGCONT)
        _, err = racing.communicate(timeout=120)
    assert racing.returncode == 1
    assert "photos@v2 already exists on the store: another machine" in err
    # A's next snapshot adopts B's v2 (with its bands) and commits v3 on top.
    out = a.json("snapshot")["collections"][0]
    assert out["version"] == 3
    a.run("check")
    a.run("restore", "fetch", "photos@v2", "--to", str(tmp_path / "b_v2"))
    assert diff_r(src_b, tmp_path / "b_v2") == []
    a.run("restore", "fetch", "photos@v3", "--to", str(tmp_path / "a_v3"))
    assert diff_r(src_a, tmp_path / "a_v3") == []
    # B adopts A's v3 the same way, then commits its own tree as v4.
    assert b.json("snapshot")["collections"][0]["version"] == 4
    assert [v["version"] for v in b.versions("photos")] == [1, 2, 3, 4]
    b.run("check")


def test_kill_while_archiving_cold_bands(s3_bucket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="2MiB")
    src = env.add_collection("photos")  # cold: bands move to DEEP_ARCHIVE after the commit
    for i in range(3):
        write(src / f"img{i}.raw", os.urandom(1_500_000))
    env.run("init")
    proc = env.run("snapshot", expect=None, env=env.env(VAULTFS_TESTPOINTS="before-archive#2=kill"))
    assert proc.returncode == -signal.SIGKILL
    assert [v["version"] for v in env.versions("photos")] == [1]
    env.run("snapshot")  # finishes the move
    env.run("check")
    out = env.json("check", "--read-data", expect=3)  # archived: listed, not silently skipped
    assert out["problems"] == [] and len(out["not_read"]) >= 2
    nas = second_machine(env, tmp_path / "nas2")
    assert nas.json("index", "rebuild")["rung"] == "index"
    nas.run("check")
    states = {v["state"] for v in nas.versions("photos")}
    assert any("archived" in s for s in states), states
    no_debris(env)


@pytest.mark.parametrize("spec", ["after-scan=explode", "store-faults=lots", "store-faults=2:1", "=kill"])
def test_a_mistyped_test_hook_is_a_usage_error_not_a_silent_no_op(file_vault: VaultEnv, spec: str) -> None:
    """A hook that silently did nothing would let a crash test pass without crashing."""
    proc = file_vault.run("init", expect=2, env=file_vault.env(VAULTFS_TESTPOINTS=spec))
    assert proc.stderr.count("\n") == 1 and "VAULTFS_TESTPOINTS" in proc.stderr
    assert spec in proc.stderr and "Traceback" not in proc.stderr
