"""The consolidated index on the store, and `vaultfs index rebuild` on every rung."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.trees import diff_r, make_every_kind, write
from tests.vaultenv import VaultEnv
from vaultfs import index
from vaultfs.config import load_config
from vaultfs.index import publishing
from vaultfs.snapshot import Snapshot
from vaultfs.vault import Vault


def second_machine(env: VaultEnv, tmp: Path) -> VaultEnv:
    """A NAS with only the config (same store, same sources) and an empty state dir."""
    other = VaultEnv(
        tmp,
        env.store_url,
        s3_endpoint=env.s3_endpoint,
        bucket=env.bucket,
        band_size=env.band_size,
        collections=dict(env.collections),
    )
    tmp.mkdir(parents=True, exist_ok=True)
    other.write_config()
    return other


def put_object(env: VaultEnv, key: str, data: bytes) -> None:
    if env.store_url.startswith("file://"):
        path = env.store_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        env.bucket.client().put_object(Bucket=env.bucket.name, Key="vault/" + key, Body=data)


def two_versions(env: VaultEnv) -> Path:
    env.band_size = "1MiB"
    src = env.add_collection("photos", tier="warm")  # warm: bands stay readable on S3
    make_every_kind(src)
    (src / "socket").unlink()  # recorded but never restored: keep restores warning-free
    write(src / "big" / "a.bin", os.urandom(1_500_000))
    env.run("init")
    env.run("snapshot")
    write(src / "later.txt", b"added in v2\n")
    write(src / "big" / "b.bin", os.urandom(700_000))
    env.run("snapshot")
    return src


def test_index_is_incremental_and_readable_with_standard_tools(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = file_vault.add_collection("photos")
    write(src / "a.txt", b"a" * 1000)
    file_vault.run("init")
    sizes = []
    for i in range(3):
        write(src / f"f{i}.txt", f"file {i}\n".encode() * 50)
        file_vault.run("snapshot")
        keys = file_vault.store_keys("index/")
        assert len(keys) == i + 1 and keys[-1].endswith(f"{i + 1:012d}-delta.zst")
        sizes.append((file_vault.store_dir / keys[-1]).stat().st_size)
    assert max(sizes) < 4096  # a delta holds one version, not the whole index
    obj = file_vault.fetch_object("index/000000000003-delta.zst", tmp_path / "obj")
    raw = obj.read_bytes()
    header, body = raw[:80], raw[80:]
    assert header.startswith(b"VAULTFS-INDEX1 ")
    assert hashlib.sha256(body).hexdigest() == header[15:79].decode()
    text = subprocess.run(f"tail -c +81 {obj} | zstd -dc", shell=True, check=True, capture_output=True).stdout
    doc = json.loads(text)
    assert doc["generation"] == 3 and doc["kind"] == "delta"
    assert [v["number"] for v in doc["versions"]] == [3]
    # An unchanged snapshot adds no index object.
    file_vault.run("snapshot")
    assert len(file_vault.store_keys("index/")) == 3


def snapshots_in_process(env: VaultEnv, count: int) -> Vault:
    """`count` snapshots of a growing collection through one open vault (so that a
    monkeypatched index setting applies); the caller closes the vault."""
    src = env.add_collection("photos")
    env.run("init")
    config = load_config(env.config_path)
    vault = Vault.open(config)
    with vault.lock():
        for i in range(count):
            write(src / f"f{i}.bin", os.urandom(5000))
            Snapshot(vault, config.collection("photos")).run()
    return vault


def test_consolidation_into_a_full_object(file_vault: VaultEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publishing, "CONSOLIDATE_AFTER", 3)
    vault = snapshots_in_process(file_vault, 4)
    try:
        keys = file_vault.store_keys("index/")
        assert keys == [
            "index/000000000001-delta.zst",
            "index/000000000002-delta.zst",
            "index/000000000003-delta.zst",
            "index/000000000004-full.zst",
            "index/000000000005-delta.zst",
        ]
        vid = vault.catalog.meta("vault_id") or ""
        loaded = index.load_index(vault.store, vid)
        assert loaded.objects == keys[3:] and not loaded.problems
        content = loaded.content
        assert sorted(content.versions) == [("photos", n) for n in range(1, 5)]
        assert dict(vault.catalog.iter_blobs()) == content.blobs
        assert dict(vault.catalog.iter_trees()) == content.trees
        assert {b.band for b in vault.catalog.bands()} == set(content.bands)
        # A damaged full object is passed over for the deltas before it.
        full = file_vault.store_dir / keys[3]
        data = bytearray(full.read_bytes())
        data[-10] ^= 0xFF
        full.write_bytes(bytes(data))
        again = index.load_index(vault.store, vid)
        assert again.skipped and not again.problems
        assert again.content.versions == content.versions
        assert again.content.blobs == content.blobs
    finally:
        vault.close()


@pytest.mark.parametrize("rung", [None, "sidecars", "tails", "scan"])
def test_rebuild_into_an_empty_state_dir(vault_env: VaultEnv, tmp_path: Path, rung: str | None) -> None:
    src = two_versions(vault_env)
    nas = second_machine(vault_env, tmp_path / "nas2")
    out = nas.json("index", "rebuild", *(["--from", rung] if rung else []))
    assert out["rung"] == (rung or "index"), out
    assert out["problems"] == []
    if rung is None:
        assert any("rung 1" in w and "there is none" in w for w in out["why"])
    assert out["versions"] == ["photos@v1", "photos@v2"]
    assert [v["version"] for v in nas.versions("photos")] == [1, 2]
    assert [v["files"] for v in nas.versions("photos")] == [v["files"] for v in vault_env.versions("photos")]
    # Each band's zstd levels come back too (from the index, or its catalog's frame_levels).
    levels = [v["compression_levels"] for v in vault_env.versions("photos")]
    assert levels[0] is not None and [v["compression_levels"] for v in nas.versions("photos")] == levels
    nas.run("check")
    restored = tmp_path / "v2"
    nas.run("restore", "fetch", "photos@v2", "--to", str(restored))
    assert diff_r(src, restored) == []
    nas.run("restore", "fetch", "photos@v1", "--to", str(tmp_path / "v1"))
    assert not (tmp_path / "v1" / "later.txt").exists()
    # The rebuilt vault takes new snapshots (same tree: no new version; a change: v3).
    assert nas.json("snapshot")["collections"][0]["unchanged"]
    write(src / "v3.txt", b"three")
    assert nas.json("snapshot")["collections"][0]["version"] == 3
    nas.run("check")


def test_forgotten_versions_stay_forgotten_on_every_rung(file_vault: VaultEnv, tmp_path: Path) -> None:
    two_versions(file_vault)
    put_object(
        file_vault,
        "forgotten/photos/1.json",
        json.dumps({"collection": "photos", "number": 1, "forgotten_ns": 1}).encode(),
    )
    for i, rung in enumerate(["index", "sidecars", "tails", "scan"]):
        nas = second_machine(file_vault, tmp_path / f"nas{i}")
        out = nas.json("index", "rebuild", "--from", rung)
        assert out["versions"] == ["photos@v2"], (rung, out)
        assert [v["version"] for v in nas.versions("photos")] == [2]


def test_rebuild_tops_up_versions_newer_than_the_index(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = two_versions(file_vault)
    write(src / "v3.txt", b"three")
    proc = file_vault.run(
        "snapshot", expect=None, env=file_vault.env(VAULTFS_TESTPOINTS="index-publish=kill")
    )
    assert proc.returncode == -9
    assert len(file_vault.store_keys("index/")) == 2  # v3 is committed but not indexed
    nas = second_machine(file_vault, tmp_path / "nas2")
    out = nas.json("index", "rebuild")
    assert out["rung"] == "index"
    assert any("1 newer version(s)" in n for n in out["notes"]), out
    assert out["versions"] == ["photos@v1", "photos@v2", "photos@v3"]
    nas.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"))
    assert diff_r(src, tmp_path / "out") == []


def test_archived_bands_need_a_confirmed_restore(s3_bucket, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = VaultEnv.on_s3(tmp_path, s3_bucket)
    env.write_config()
    src = two_versions(env)
    env.move_bands_to("DEEP_ARCHIVE")
    nas = second_machine(env, tmp_path / "nas2")
    refused = nas.run("index", "rebuild", "--from", "tails", expect=1)
    assert "restore" in refused.stderr and "archived band(s)" in refused.stderr
    assert "pass --yes" in refused.stderr
    out = nas.json("index", "rebuild", "--from", "tails", "--yes")
    assert out["problems"] == [] and out["versions"] == ["photos@v1", "photos@v2"]
    assert out["restore_plan"]
    nas.run("restore", "fetch", "photos", "--to", str(tmp_path / "out"))
    assert diff_r(src, tmp_path / "out") == []


def test_prune_deletes_superseded_index_objects(
    file_vault: VaultEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune keeps the two newest full objects and the deltas after the older one; the
    index loads the same as before, and still falls back if the newest full is damaged."""
    from vaultfs import retention

    monkeypatch.setattr(publishing, "CONSOLIDATE_AFTER", 2)
    vault = snapshots_in_process(file_vault, 7)
    try:
        with vault.lock():
            before = file_vault.store_keys("index/")
            fulls = [k for k in before if k.endswith("-full.zst")]
            assert len(fulls) >= 3
            vid = vault.catalog.meta("vault_id") or ""
            loaded = index.load_index(vault.store, vid)
            dry = retention.prune(vault, dry_run=True)
            assert file_vault.store_keys("index/") == before  # a dry run deletes nothing
            result = retention.prune(vault)
        after = file_vault.store_keys("index/")
        assert result.index_objects == dry.index_objects
        assert after == [k for k in before if k >= fulls[-2]]
        assert sorted(result.index_objects) == sorted(set(before) - set(after))
        again = index.load_index(vault.store, vid)
        assert again.content.versions == loaded.content.versions
        assert again.content.blobs == loaded.content.blobs
        assert again.content.trees == loaded.content.trees
        # The newest full damaged: the older kept one and the deltas after it still do.
        newest = file_vault.store_dir / fulls[-1]
        data = bytearray(newest.read_bytes())
        data[-10] ^= 0xFF
        newest.write_bytes(bytes(data))
        fallback = index.load_index(vault.store, vid)
        assert fallback.skipped and not fallback.problems
        assert fallback.content.versions == loaded.content.versions
        assert fallback.content.blobs == loaded.content.blobs
    finally:
        vault.close()
