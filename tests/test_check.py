"""`vaultfs check`: the index against the store, --read-data, --source (bit rot)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.test_retention import set_bands
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.config import Prices


def setup(env: VaultEnv) -> Path:
    env.band_size = "1MiB"
    src = env.add_collection("photos", tier="warm")  # warm: bands stay readable on S3
    for i in range(4):
        write(src / f"img{i}.raw", os.urandom(400_000))
    write(src / "notes.txt", b"notes\n" * 100)
    env.run("init")
    env.run("snapshot")
    return src


def store_path(env: VaultEnv, key: str) -> Path:
    return env.store_dir / key


def test_clean_vault_checks_clean(vault_env: VaultEnv) -> None:
    setup(vault_env)
    out = vault_env.json("check", "--read-data")
    assert out["ok"] and out["problems"] == [] and out["not_read"] == []
    assert out["checked"]["bands_read"] == out["checked"]["bands"] >= 2
    assert out["checked"]["versions"] == 1 and out["checked"]["index_objects"] == 1
    assert "check: clean" in vault_env.run("check").stdout


def test_missing_band_is_reported_with_the_versions_it_affects(file_vault: VaultEnv) -> None:
    setup(file_vault)
    write(file_vault.collections["photos"][0] / "v2.txt", b"two")
    file_vault.run("snapshot")
    band = max(
        (k for k in file_vault.store_keys("bands/") if k.endswith(".tar.zst")),
        key=lambda k: store_path(file_vault, k).stat().st_size,
    )  # v1's data: v2 too
    store_path(file_vault, band).unlink()
    out = file_vault.json("check", expect=1)
    assert not out["ok"] and out["exit_code"] == 1
    missing = [p for p in out["problems"] if "missing from the store" in p["what"]]
    assert len(missing) == 1 and band in missing[0]["what"]
    assert missing[0]["affects"] == ["photos@v1", "photos@v2"]
    proc = file_vault.run("check", expect=1)
    assert "PROBLEM" in proc.stderr and "affects: photos@v1" in proc.stderr


def test_source_bit_rot_is_told_apart_from_modifications(file_vault: VaultEnv) -> None:
    src = setup(file_vault)
    assert file_vault.json("check", "--source", "photos")["source"]["bitrot_suspected"] == []
    # Ordinary change: new bytes, new mtime.
    write(src / "notes.txt", b"edited\n")
    # Bit rot: same size and mtime, one flipped byte.
    victim = src / "img2.raw"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0x01
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    write(src / "new.txt", b"new")
    (src / "img3.raw").unlink()
    out = file_vault.json("check", "--source", "photos", expect=1)
    s = out["source"]
    assert s["bitrot_suspected"] == ["img2.raw"]
    assert s["modified"] == ["notes.txt"]
    assert s["added"] == ["new.txt"] and s["deleted"] == ["img3.raw"]
    assert [p["affects"] for p in out["problems"]] == [["photos@v1"]]
    assert "bit rot suspected: photos/img2.raw" in out["problems"][0]["what"]


def test_archived_bands_are_listed_with_the_plan_never_skipped(s3_bucket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = VaultEnv(
        tmp_path, f"s3://{s3_bucket.name}/vault", s3_endpoint=s3_bucket.endpoint_url, bucket=s3_bucket
    )
    env.write_config()
    setup(env)
    client = s3_bucket.client()
    archived = sorted(k for k in env.store_keys("bands/") if k.endswith(".tar.zst"))[:1]
    for key in archived:
        client.copy_object(
            Bucket=s3_bucket.name,
            Key="vault/" + key,
            CopySource={"Bucket": s3_bucket.name, "Key": "vault/" + key},
            StorageClass="DEEP_ARCHIVE",
        )
    out = env.json("check", "--read-data", expect=3)
    assert out["problems"] == []
    assert [f"bands/{n['band']}.tar.zst" for n in out["not_read"]] == archived
    assert out["checked"]["bands_read"] == out["checked"]["bands"] - 1
    size = out["not_read"][0]["size"]
    cost = out["not_read_restore"]
    assert cost["bands"] == 1 and cost["bytes"] == size and cost["restore_days"] == 7
    assert cost["cost_usd"]["Bulk"] == round(Prices().restore_cost(size, 1, "Bulk", 7), 6) > 0
    proc = env.run("check", "--read-data", expect=3)
    assert "NOT READ" in proc.stderr and "takes restores: ~$" in proc.stderr
    # The advice is a command that exists, and following it makes the band readable.
    advice = out["not_read"][0]["plan"]
    assert "`vaultfs restore start photos@v1`" in advice, advice
    band = out["not_read"][0]["band"]
    set_bands(env, [band], storage_class="DEEP_ARCHIVE", state="archived")  # as archiving records it
    env.run("restore", "start", "photos@v1")  # moto restores at once
    again = env.json("check", "--read-data")
    assert again["not_read"] == [] and again["checked"]["bands_read"] == again["checked"]["bands"]
