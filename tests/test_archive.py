"""Deep Archive: verified bands move there after a snapshot, and come back on request.

S3 is moto's HTTP server; a restore is held *pending* with moto's state manager
(model ``s3::keyrestore``) and released with ``unset-transition``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.moto_server import S3Bucket
from tests.trees import diff_r, write
from tests.vaultenv import VaultEnv

PRICES = """
[prices]
taken = "test prices"
bulk_per_gb = 0.5
standard_per_gb = 2.0
bulk_per_1000_requests = 100.0
standard_per_1000_requests = 1000.0
restored_copy_per_gb_month = 3.0
bulk_hours = 48
standard_hours = 12
"""


def moto_api(bucket: S3Bucket, action: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{bucket.endpoint_url}/moto-api/state-manager/{action}",
        data=json.dumps(body).encode(),
        method="POST",
    )
    urllib.request.urlopen(request).close()


def start_held_restores(env: VaultEnv, *args: str) -> dict[str, Any]:
    """``vaultfs restore start``, with the restores left pending on moto.

    moto's restore state starts at None (which its x-amz-restore header shows as
    done), moves to IN_PROGRESS, then RESTORED, one step each time the state is
    looked at after ``times`` requests. So: one step allowed while the restore is
    requested and looked at once (→ IN_PROGRESS), then none.
    """

    def transition(times: int) -> None:
        moto_api(
            env.bucket,
            "set-transition",
            {
                "model_name": "s3::keyrestore",
                "transition": {"progression": "manual", "times": times},
            },
        )

    transition(1)
    result = env.json("restore", "start", *args)
    client = env.bucket.client()
    for band in result["requested"]:
        head = client.head_object(Bucket=env.bucket.name, Key=f"vault/bands/{band['band']}.tar.zst")
        assert head["Restore"] == 'ongoing-request="true"'
    transition(10**9)
    assert isinstance(result, dict)
    return result


def release_restores(bucket: S3Bucket) -> None:
    moto_api(bucket, "unset-transition", {"model_name": "s3::keyrestore"})


@pytest.fixture
def cold(s3_bucket: S3Bucket, tmp_path: Path) -> Iterator[VaultEnv]:
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="1MiB")
    env.extra_config = PRICES
    src = env.add_collection("photos", tier="cold")
    for i in range(3):
        write(src / f"img{i}.raw", os.urandom(1_200_000))
    env.run("init")
    yield env
    release_restores(s3_bucket)


def storage_classes(env: VaultEnv) -> dict[str, str]:
    client = env.bucket.client()
    out = {}
    for key in env.store_keys():
        head = client.head_object(Bucket=env.bucket.name, Key="vault/" + key)
        out[key] = head.get("StorageClass", "STANDARD")
    return out


def test_bands_move_to_deep_archive_after_the_snapshot(cold: VaultEnv) -> None:
    result = cold.json("snapshot")["collections"][0]
    assert result["archived"] == 3
    classes = storage_classes(cold)
    data_bands = [k for k in classes if k.endswith(".tar.zst")]
    archived = [k for k in data_bands if classes[k] == "DEEP_ARCHIVE"]
    assert len(archived) == 3
    assert len(data_bands) == 4  # plus the small band carrying the trees: it stays STANDARD
    for key, cls in classes.items():
        if not key.endswith(".tar.zst"):
            assert cls == "STANDARD", key  # sidecars, version records, vault.json
    assert [v["state"] for v in cold.versions("photos")] == ["archived,standard"]


def test_warm_collections_stay_standard(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="1MiB")
    src = env.add_collection("code", tier="warm")
    write(src / "big.bin", os.urandom(2_000_000))
    env.run("init")
    assert env.json("snapshot")["collections"][0]["archived"] == 0
    assert set(storage_classes(env).values()) == {"STANDARD"}


def test_interrupted_archiving_finishes_on_the_next_run(cold: VaultEnv) -> None:
    proc = cold.run("snapshot", expect=None, env=cold.env(VAULTFS_TESTPOINTS="before-archive#2=kill"))
    assert proc.returncode == -signal.SIGKILL
    assert [v["version"] for v in cold.versions("photos")] == [1]  # committed before archiving
    assert sum(c == "DEEP_ARCHIVE" for c in storage_classes(cold).values()) == 1
    again = cold.json("snapshot")["collections"][0]
    assert again["unchanged"] is True and again["archived"] == 2
    assert sum(c == "DEEP_ARCHIVE" for c in storage_classes(cold).values()) == 3


def test_plan_figures(cold: VaultEnv) -> None:
    cold.run("snapshot")
    plan = cold.json("restore", "plan", "photos")
    sizes = [b["size"] for b in plan["to_restore"]]
    assert len(sizes) == 3 and plan["requests"] == 3
    gb = sum(sizes) / 1024**3  # AWS bills per GB of 2^30 bytes
    days = 7  # [s3].restore_days default
    bulk = gb * 0.5 + 3 / 1000 * 100.0 + gb * 3.0 * days / 30
    standard = gb * 2.0 + 3 / 1000 * 1000.0 + gb * 3.0 * days / 30
    assert plan["tiers"]["Bulk"]["cost_usd"] == pytest.approx(bulk, abs=1e-4)
    assert plan["tiers"]["Standard"]["cost_usd"] == pytest.approx(standard, abs=1e-4)
    assert plan["tiers"]["Bulk"]["hours"] == 48 and plan["tiers"]["Standard"]["hours"] == 12
    assert plan["readable"] == [] and plan["prices_taken"] == "test prices"
    # Only the bands the chosen paths need.
    one = cold.json("restore", "plan", "photos", "img1.raw")
    assert one["requests"] == 1 and one["bands_needed"] == 1


def test_a_refused_fetch_advises_restoring_only_what_was_asked(cold: VaultEnv, tmp_path: Path) -> None:
    cold.run("snapshot")
    refused = cold.run("restore", "fetch", "photos", "img1.raw", "--to", str(tmp_path / "out"), expect=1)
    assert len(refused.stderr.strip().splitlines()) == 1
    hint = re.search(r"run `vaultfs (restore start [^`]*)` first", refused.stderr)
    assert hint is not None, refused.stderr
    assert hint.group(1) == "restore start photos@v1 img1.raw"
    started = cold.json(*shlex.split(hint.group(1)))  # followed as printed, pasted into a shell
    assert len(started["requested"]) == 1  # the band of that one file, not all three


def test_fetch_needs_a_restore_then_works(cold: VaultEnv, tmp_path: Path) -> None:
    cold.run("snapshot")
    out = tmp_path / "out"
    refused = cold.run("restore", "fetch", "photos", "--to", str(out), expect=1)
    assert "are archived: run `vaultfs restore start photos@v1` first" in refused.stderr
    started = cold.json("restore", "start", "photos")
    assert len(started["requested"]) == 3
    again = cold.json("restore", "start", "photos")  # moto restores at once: now restored
    assert again["requested"] == []
    status = cold.json("restore", "status")
    assert {b["state"] for b in status["bands"]} == {"restored"}
    assert all(b["expires_at"] for b in status["bands"])
    cold.run("restore", "fetch", "photos", "--to", str(out))
    assert diff_r(cold.tmp / "src" / "photos", out) == []


def test_pending_restore_fetch_wait(cold: VaultEnv, tmp_path: Path) -> None:
    cold.run("snapshot")
    assert len(start_held_restores(cold, "photos", "--tier", "Standard")["requested"]) == 3
    assert cold.json("restore", "start", "photos")["requested"] == []  # restoring: not asked again
    status = cold.json("restore", "status")
    assert {b["state"] for b in status["bands"]} == {"restoring"}
    assert {b["tier"] for b in status["bands"]} == {"Standard"}
    assert status["bytes_pending"] > 3_600_000
    out = tmp_path / "out"
    not_yet = cold.run("restore", "fetch", "photos", "--to", str(out), expect=1)
    assert "still restoring: add --wait" in not_yet.stderr
    proc = cold.popen("restore", "fetch", "photos", "--to", str(out), "--wait", "--interval", "0.05")
    assert proc.stderr is not None
    line = proc.stderr.readline()  # blocks until the command reports that it is waiting
    assert "waiting for 3 band(s) to be restored" in line
    release_restores(cold.bucket)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert diff_r(cold.tmp / "src" / "photos", out) == []


def test_restore_expiry_returns_the_band_to_archived(cold: VaultEnv) -> None:
    from vaultfs import archive

    cold.run("snapshot")
    cold.run("restore", "start", "photos", "img0.raw")
    vault = cold.open_vault()
    try:
        (band,) = archive.in_flight(vault)
        restored = archive.refresh(vault, band)
        assert restored.state == "restored" and restored.restore is not None
        later = restored.restore.expires_ns + 1
        assert archive.refresh(vault, restored, now=later).state == "archived"
        now = vault.catalog.band(band.band)
        assert now is not None and now.state == "archived"
    finally:
        vault.close()


def test_restore_already_in_progress_is_not_an_error(cold: VaultEnv) -> None:
    """Real S3 answers 409 RestoreAlreadyInProgress to a second request (moto never does)."""
    from botocore.awsrequest import AWSResponse, HTTPHeaders

    from vaultfs import archive

    cold.run("snapshot")
    cold.run("restore", "start", "photos", "img2.raw")
    vault = cold.open_vault()
    try:
        (band,) = archive.in_flight(vault)
        s3 = vault.store.inner  # below the retry wrapper
        answered: list[int] = []

        class Raw:
            def __init__(self, body: bytes) -> None:
                self.body = body

            def stream(self, **_: Any) -> Any:
                yield self.body

            def read(self, *_: Any) -> bytes:
                body, self.body = self.body, b""
                return body

        def conflict(request: Any, **_: Any) -> AWSResponse:
            answered.append(409)
            body = (
                b"<Error><Code>RestoreAlreadyInProgress</Code>"
                b"<Message>Object restore is already in progress</Message></Error>"
            )
            return AWSResponse(request.url, 409, HTTPHeaders(), Raw(body))

        s3._client.meta.events.register("before-send.s3.RestoreObject", conflict)
        # The catalog says "archived" (as after an expiry it would), S3 says "in progress".
        with vault.catalog.writer() as w:
            w.put_band(replace(band, state="archived", restore=None))
        stale = vault.catalog.band(band.band)
        assert stale is not None
        (requested,) = archive.request_restores(vault, [stale], "Bulk", 3)
        assert answered == [409] and requested.state == "restoring"
    finally:
        vault.close()


def test_status_watch_waits_for_pending_restores(cold: VaultEnv) -> None:
    cold.run("snapshot")
    start_held_restores(cold, "photos", "img1.raw")
    proc = cold.popen("restore", "status", "--watch", "--interval", "0.05", "--json")
    assert proc.stderr is not None
    assert "1 band(s) still restoring" in proc.stderr.readline()  # it is waiting
    release_restores(cold.bucket)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert [b["state"] for b in doc["bands"]] == ["restored"]
    assert doc["bytes_pending"] == 0 and doc["bytes_ready"] > 1_000_000


def test_a_restored_copy_about_to_expire_is_extended(cold: VaultEnv) -> None:
    from vaultfs import archive

    cold.run("snapshot")
    cold.run("restore", "start", "photos", "img0.raw")
    vault = cold.open_vault()
    try:
        (band,) = archive.in_flight(vault)
        band = archive.refresh(vault, band)
        assert band.state == "restored" and band.restore is not None
        far = band.restore.expires_ns - 3 * 24 * 3600 * 10**9  # expires in 3 days: kept
        assert archive.request_restores(vault, [band], "Bulk", 7, now=far) == []
        soon = band.restore.expires_ns - 3600 * 10**9  # expires within the hour: extended
        (extended,) = archive.request_restores(vault, [band], "Bulk", 9, now=soon)
        assert extended.state == "restored" and extended.restore is not None
        assert extended.restore.requested_ns == soon and extended.restore.days == 9
    finally:
        vault.close()
