"""A snapshot killed at any point leaves no partial version, and the next run completes."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.trees import diff_r, write
from tests.vaultenv import VaultEnv


def fill(src: Path, files: int = 8, size: int = 400_000) -> None:
    for i in range(files):
        write(src / f"d{i % 3}" / f"f{i}.bin", os.urandom(size))


def killed(env: VaultEnv, point: str) -> subprocess.CompletedProcess[str]:
    proc = env.run("snapshot", expect=None, env=env.env(VAULTFS_TESTPOINTS=f"{point}=kill"))
    assert proc.returncode == -signal.SIGKILL, (point, proc.stderr)
    return proc


@pytest.mark.parametrize(
    "point",
    [
        "after-scan",
        "band-closed#1",
        "band-uploaded#1",
        "band-closed#3",
        "before-commit",
        "version-record-written",
    ],
)
def test_kill_then_resume(vault_env: VaultEnv, tmp_path: Path, point: str) -> None:
    vault_env.band_size = "1MiB"
    src = vault_env.add_collection("photos")
    fill(src)
    vault_env.run("init")
    killed(vault_env, point)
    committed = point == "version-record-written"
    if not committed:
        assert vault_env.versions("photos") == []  # nothing partial is listed
    result = vault_env.json("snapshot")["collections"][0]
    assert result["latest"] == 1
    assert [v["version"] for v in vault_env.versions("photos")] == [1]
    out = tmp_path / "out"
    vault_env.run("restore", "fetch", "photos", "--to", str(out))
    assert diff_r(src, out) == []
    assert list((vault_env.state_dir / "spool").iterdir()) == []


def test_uploaded_bands_are_not_sent_again(file_vault: VaultEnv) -> None:
    file_vault.band_size = "1MiB"
    src = file_vault.add_collection("photos")
    fill(src, files=10)
    file_vault.run("init")
    killed(file_vault, "band-uploaded#2")
    result = file_vault.json("snapshot")["collections"][0]
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    # Two bands of about 1 MiB each survived the crash and were reused.
    assert result["stats"]["bytes_added"] <= total - 1_500_000


def test_multipart_upload_killed_midway_is_aborted(s3_bucket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="32MiB")
    src = env.add_collection("media", tier="warm")  # warm: the band stays readable
    write(src / "video.bin", os.urandom(12 * 1024 * 1024))  # 3 parts of 5 MiB
    env.run("init")
    killed(env, "multipart-part-uploaded#1")
    client = s3_bucket.client()
    assert client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads")
    env.run("snapshot")
    assert not client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads")
    out = tmp_path / "out"
    env.run("restore", "fetch", "media", "--to", str(out))
    assert diff_r(src, out) == []
