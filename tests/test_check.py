"""`vaultfs check`: the index against the store, --read-data, --source (bit rot)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.test_ignore import make_repo
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


def test_source_check_leaves_out_what_the_snapshot_leaves_out(file_vault: VaultEnv) -> None:
    """`check --source` walks the source with the collection's rules (git's ignore files,
    CACHEDIR.TAG): excluded files are not "added", and git-tracked ones are still compared."""
    src = file_vault.add_collection("code", tier="warm")
    make_repo(src)
    file_vault.run("init")
    assert file_vault.json("snapshot")["collections"][0]["excluded"] == 5
    clean = file_vault.json("check", "--source", "code")["source"]
    assert (clean["added"], clean["deleted"], clean["modified"]) == ([], [], [])
    assert clean["hashed"] == clean["files"] > 0
    for path in ("app/x.o", "app/build/new.bin", "app/build/deep/new.bin", "cache/new", "new.swp"):
        write(src / path, b"left out by a rule")
    write(src / "app/added.c", b"a new source file\n")
    write(src / "app/vendor/lib.o", b"tracked: compared although *.o matches")
    s = file_vault.json("check", "--source", "code")["source"]
    assert s["added"] == ["app/added.c"] and s["modified"] == ["app/vendor/lib.o"]
    assert s["deleted"] == [] and s["files"] == clean["files"] + 1


def test_a_hard_link_is_read_once_under_its_first_name(file_vault: VaultEnv) -> None:
    """`check --source` and `scrub` walk a version's files alike: a second name of a
    hard-linked file has no blob of its own, so it is known (neither added nor deleted)
    but not read again."""
    src = file_vault.add_collection("photos")
    write(src / "a.raw", os.urandom(100_000))
    os.link(src / "a.raw", src / "b.raw")
    write(src / "c.raw", os.urandom(100_000))
    file_vault.run("init")
    file_vault.run("snapshot")
    s = file_vault.json("check", "--source", "photos")["source"]
    assert (s["files"], s["hashed"], s["added"], s["deleted"]) == (3, 2, [], [])
    scrubbed = file_vault.json("scrub")
    assert (scrubbed["planned_files"], scrubbed["read_bytes"]) == (2, 200_000)


def test_archived_bands_are_listed_with_the_plan_never_skipped(s3_bucket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = VaultEnv.on_s3(tmp_path, s3_bucket)
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
