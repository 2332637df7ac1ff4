"""forget and prune: the command line (file:// and s3:// on moto) and the edge cases in-process.

The property test (`test_retention_property`) covers random sequences; the
tests here pin down the user-visible contract: what is printed, what is
refused, what a dry run leaves alone, and recovery from interrupted runs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.test_retention_property import DAY, World, read_tree
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs import band as bandfmt
from vaultfs import retention
from vaultfs.catalog import Catalog
from vaultfs.cli import retention as cli_retention
from vaultfs.config import KeepPolicy, Prices
from vaultfs.errors import CorruptionError
from vaultfs.model import BandId, BlobId, TreeId, sidecar_key, to_text
from vaultfs.store import StoreError


def three_versions(env: VaultEnv, name: str = "photos") -> Path:
    """v1: a (300 kB) and b; v2: a replaced; v3: c added.

    With 64 KiB bands, a.raw has bands of its own: v1's holds only garbage once v1 is gone.
    """
    env.band_size = "64KiB"
    src = env.add_collection(name, tier="warm")
    write(src / "a.raw", os.urandom(300_000))
    write(src / "b.txt", b"kept in every version\n" * 100)
    env.run("init")
    env.run("snapshot")
    write(src / "a.raw", os.urandom(200_000))
    env.run("snapshot")
    write(src / "c.txt", b"third\n")
    env.run("snapshot")
    return src


def set_bands(env: VaultEnv, bands: list[str], **changes: Any) -> None:
    """Change BandInfo fields behind vaultfs's back (archiving is issue 4, not built yet)."""
    catalog = Catalog(env.state_dir / "catalog.lmdb")
    try:
        with catalog.writer() as w:
            for band in bands:
                info = catalog.band(BandId(band))
                assert info is not None
                w.put_band(replace(info, **changes))
    finally:
        catalog.close()


def unused_bands(env: VaultEnv) -> list[str]:
    """The bands a prune would delete now (all STANDARD so far): from a dry run."""
    plan = env.json("prune", "--dry-run")
    assert plan["deleted"] and not plan["kept_young"]
    return [b["band"] for b in plan["deleted"]]


def catalog_dump(env: VaultEnv) -> Any:
    catalog = Catalog(env.state_dir / "catalog.lmdb", readonly=True)
    try:
        return {name: sorted(catalog.iter_raw(name)) for name in ("versions", "trees", "blobs", "bands")}
    finally:
        catalog.close()


def store_dump(env: VaultEnv, tmp: Path) -> dict[str, bytes]:
    return {k: env.fetch_object(k, tmp / "obj").read_bytes() for k in env.store_keys()}


# ---- the command line ------------------------------------------------------------------------


def test_forget_then_prune(vault_env: VaultEnv, tmp_path: Path) -> None:
    src = three_versions(vault_env)
    forgot = vault_env.json("forget", "photos", "--keep", "1")
    assert forgot["collections"][0]["forgotten"] == [1, 2]
    assert forgot["collections"][0]["kept"] == [3]
    # Forgotten versions are not listed, and are written down on the store.
    assert [v["version"] for v in vault_env.versions("photos")] == [3]
    assert "v1" not in vault_env.run("versions", "photos").stdout
    assert vault_env.store_keys("forgotten/") == ["forgotten/photos/1.json", "forgotten/photos/2.json"]
    marker = json.loads(vault_env.fetch_object("forgotten/photos/1.json", tmp_path / "m").read_bytes())
    assert marker["collection"] == "photos" and marker["number"] == 1 and marker["forgotten_ns"] > 0
    # The records stay until prune.
    assert "versions/photos/1.json" in vault_env.store_keys("versions/")
    bands_before = set(vault_env.store_keys("bands/"))
    pruned = vault_env.json("prune")
    deleted = {b["band"] for b in pruned["deleted"]}
    assert deleted and pruned["bytes_freed"] > 300_000
    assert pruned["early_delete_charge_usd"] == 0
    assert {(r["collection"], r["version"]) for r in pruned["version_records_deleted"]} == {
        ("photos", 1),
        ("photos", 2),
    }
    after = set(vault_env.store_keys("bands/"))
    for band in deleted:
        assert f"bands/{band}.tar.zst" in bands_before - after
        assert f"bands/{band}.catalog.zst" in bands_before - after
    assert vault_env.store_keys("versions/") == ["versions/photos/3.json"]
    assert vault_env.store_keys("forgotten/") == ["forgotten/photos/1.json", "forgotten/photos/2.json"]
    out = tmp_path / "out"
    vault_env.run("restore", "fetch", "photos", "--to", str(out))
    assert read_tree(out) == read_tree(src)
    gone = vault_env.run("restore", "fetch", "photos@v1", "--to", str(tmp_path / "o1"), expect=2)
    assert "photos@v1 does not exist" in gone.stderr
    # Nothing left to do; the text report still gives bytes and charge.
    text = vault_env.run("prune").stdout
    assert "delete 0 band(s): free 0 B" in text and "early-deletion charge: $0" in text
    check = vault_env.json("check", "--read-data")
    assert check["ok"] is True, check["problems"]


def test_dry_runs_change_nothing(file_vault: VaultEnv, tmp_path: Path) -> None:
    three_versions(file_vault)
    before = (catalog_dump(file_vault), store_dump(file_vault, tmp_path))
    text = file_vault.run("forget", "photos", "--keep", "1", "--dry-run").stdout
    assert "would forget 2 version(s) v1, v2" in text
    assert (catalog_dump(file_vault), store_dump(file_vault, tmp_path)) == before
    file_vault.run("forget", "photos", "--keep", "1")
    before = (catalog_dump(file_vault), store_dump(file_vault, tmp_path))
    plan = file_vault.json("prune", "--dry-run")
    assert plan["dry_run"] is True and plan["deleted"] and plan["bytes_freed"] > 300_000
    text = file_vault.run("prune", "--dry-run").stdout
    assert "would delete" in text and "would free" in text
    assert (catalog_dump(file_vault), store_dump(file_vault, tmp_path)) == before
    done = file_vault.json("prune")
    assert {b["band"] for b in done["deleted"]} == {b["band"] for b in plan["deleted"]}
    assert done["bytes_freed"] == plan["bytes_freed"]


@pytest.mark.s3
def test_early_deletion_of_deep_archive_refused_then_charged(s3_bucket: Any, tmp_path: Path) -> None:
    env = VaultEnv.on_s3(tmp_path, s3_bucket)
    env.write_config()
    three_versions(env)
    env.run("forget", "photos", "--keep", "1")
    old = unused_bands(env)
    client = s3_bucket.client()
    for band in old:  # what issue 4's archiving will do: CopyObject onto itself
        key = f"vault/bands/{band}.tar.zst"
        client.copy_object(
            Bucket=s3_bucket.name,
            Key=key,
            StorageClass="DEEP_ARCHIVE",
            CopySource={"Bucket": s3_bucket.name, "Key": key},
        )
    set_bands(env, old, storage_class="DEEP_ARCHIVE", state="archived")
    refused = env.json("prune")
    young = {b["band"]: b for b in refused["kept_young"]}
    big = max(young.values(), key=lambda b: b["size"])
    assert set(young) == set(old)
    assert big["storage_class"] == "DEEP_ARCHIVE" and big["min_days"] == 180
    assert big["early_delete_charge_usd"] > 0
    assert refused["early_delete_charge_if_forced_usd"] == pytest.approx(
        sum(b["early_delete_charge_usd"] for b in young.values()), rel=1e-3
    )
    assert refused["early_delete_charge_usd"] == 0
    assert not {b["band"] for b in refused["deleted"]} & set(old)
    head = client.head_object(Bucket=s3_bucket.name, Key=f"vault/bands/{big['band']}.tar.zst")
    assert head["StorageClass"] == "DEEP_ARCHIVE"
    text = env.run("prune").stdout
    assert "younger than their storage class's minimum duration" in text
    assert "--allow-early-delete" in text and "DEEP_ARCHIVE" in text
    forced = env.json("prune", "--allow-early-delete")
    early = {b["band"]: b for b in forced["deleted"] if b["action"] == "delete-early"}
    assert set(early) == set(old)
    assert forced["early_delete_charge_usd"] == pytest.approx(
        refused["early_delete_charge_if_forced_usd"], rel=0.01
    )
    assert forced["bytes_freed"] > 300_000
    assert not [k for k in env.store_keys("bands/") if any(b in k for b in old)]
    out = tmp_path / "out"
    env.run("restore", "fetch", "photos", "--to", str(out))
    assert read_tree(out) == read_tree(tmp_path / "src" / "photos")


def test_deleted_once_the_minimum_duration_has_passed(file_vault: VaultEnv) -> None:
    three_versions(file_vault)
    file_vault.run("forget", "photos", "--keep", "1")
    old = unused_bands(file_vault)
    set_bands(file_vault, old, storage_class="GLACIER", created_ns=time.time_ns() - 89 * DAY)
    young = file_vault.json("prune")
    assert {b["band"] for b in young["kept_young"]} == set(old)
    assert all(b["min_days"] == 90 for b in young["kept_young"])
    set_bands(file_vault, old, storage_class="GLACIER", created_ns=time.time_ns() - 91 * DAY)
    done = file_vault.json("prune")
    assert set(old) <= {b["band"] for b in done["deleted"] if b["action"] == "delete"}
    assert done["early_delete_charge_usd"] == 0 and not done["kept_young"]


def test_partly_used_band_reports_its_garbage(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("docs", tier="warm")
    write(src / "big.bin", os.urandom(30_000))
    write(src / "small.bin", os.urandom(10_000))
    file_vault.run("init")
    file_vault.run("snapshot")
    (src / "big.bin").unlink()
    file_vault.run("snapshot")
    file_vault.run("forget", "docs", "--keep", "1")
    result = file_vault.json("prune")
    [band] = result["kept_partly_used"]
    assert (band["live_blobs"], band["dead_blobs"]) == (1, 1)
    assert band["garbage_fraction"] == pytest.approx(0.75)
    text = file_vault.run("prune").stdout
    assert "partly in use" in text and "garbage 75%" in text


def test_keep_versions_from_the_config(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("docs", tier="warm")
    other = file_vault.add_collection("misc", tier="warm")
    write(other / "x", b"x")
    text = file_vault.config_path.read_text().replace(
        "[collections.docs]\n", "[collections.docs]\nkeep_versions = 2\n"
    )
    file_vault.config_path.write_text(text)
    file_vault.run("init")
    for i in range(4):
        write(src / "f.txt", f"version {i}\n".encode())
        file_vault.run("snapshot", "docs")
    file_vault.run("snapshot", "misc")
    # Each snapshot applied keep_versions already: v1 and v2 are gone.
    assert [v["version"] for v in file_vault.versions("docs")] == [3, 4]
    result = file_vault.json("forget")
    [docs] = result["collections"]
    assert (docs["collection"], docs["policy"], docs["kept"], docs["forgotten"]) == (
        "docs",
        {"keep_versions": 2},
        [3, 4],
        [],
    )
    assert [(v["version"], [r["rule"] for r in v["reasons"]]) for v in docs["versions"]] == [
        (3, ["keep_versions"]),
        (4, ["latest", "keep_versions"]),
    ]
    assert result["skipped"] == ["misc"]
    assert [v["version"] for v in file_vault.versions("docs")] == [3, 4]
    assert [v["version"] for v in file_vault.versions("misc")] == [1]
    # --keep overrides; a collection named without a policy needs --keep.
    assert file_vault.json("forget", "docs", "--keep", "1")["collections"][0]["forgotten"] == [3]
    refused = file_vault.run("forget", "misc", expect=2)
    assert "keep_versions" in refused.stderr and "--keep" in refused.stderr
    assert "no collection named" in file_vault.run("forget", "nope", "--keep", "1", expect=2).stderr
    assert "at least 1" in file_vault.run("forget", "docs", "--keep", "0", expect=2).stderr


# ---- in-process: edge cases ------------------------------------------------------------------


def two_versions(world: World) -> None:
    world.write("a", 5)
    world.write("d1/c", 2)
    world.link(0)
    world.snapshot(0)  # DEEP_ARCHIVE
    world.write("a", 7)
    world.snapshot(1)


def test_after_snapshot_applies_keep_versions(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        coll = replace(world.coll, keep_versions=2)
        with world.vault.lock():
            assert cli_retention.after_snapshot(world.vault, world.coll, quiet=True) is None
        for i in range(3):
            world.write("a", i + 1)
            world.snapshot(1)
            with world.vault.lock():
                r = cli_retention.after_snapshot(world.vault, coll, quiet=True)
            assert r is not None
        assert r is not None and r.forgotten == (1,) and r.kept == (2, 3)
        world.kept, world.forgotten = [2, 3], {1}
        world.check()
    finally:
        world.close()


def test_interrupted_prune_is_finished_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path)
    try:
        two_versions(world)
        world.clock += 200 * DAY
        world.forget(1, dry_run=False)
        store = world.vault.store
        real_delete = store.delete

        def failing_delete(key: str) -> None:
            if key.endswith(".tar.zst"):
                raise StoreError(f"injected: cannot delete {key}")
            real_delete(key)

        monkeypatch.setattr(store, "delete", failing_delete)
        with pytest.raises(StoreError), world.vault.lock():
            retention.prune(world.vault, now=lambda: world.clock)
        pending = json.loads(world.vault.catalog.meta(retention.PENDING_META) or "[]")
        assert pending
        for band in pending:  # gone from the catalog first, still on the store
            assert world.vault.catalog.band(BandId(band)) is None
            assert store.head(f"bands/{band}.tar.zst").size > 0
        monkeypatch.setattr(store, "delete", real_delete)
        with world.vault.lock():
            again = retention.prune(world.vault, now=lambda: world.clock)
        assert again.deletions_resumed == len(pending)
        assert world.vault.catalog.meta(retention.PENDING_META) is None
        world.records_gone |= world.forgotten
        world.check()
    finally:
        world.close()


def test_interrupted_forget_is_finished(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        two_versions(world)
        # A forget killed after writing its marker, before the catalog dropped v1.
        assert world.vault.mark_forgotten("c", 1, world.clock)
        assert not world.vault.mark_forgotten("c", 1, world.clock)  # write-once
        assert [v.number for v in world.vault.catalog.versions("c")] == [1, 2]
        with world.vault.lock():
            [r] = retention.forget(world.vault, {"c": KeepPolicy(keep_versions=5)})
        assert r.kept == (2,) and r.forgotten == ()
        world.kept, world.forgotten = [2], {1}
        world.check()
    finally:
        world.close()


def test_prune_refuses_when_a_kept_blob_is_unknown(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        two_versions(world)
        world.forget(1, dry_run=False)
        live = retention.live_set(world.vault, world.vault.catalog.versions("c"))
        victim = sorted(live.blobs)[0]
        with world.vault.catalog.writer() as w:
            w.delete_blob(BlobId(victim))
        bands = {b.band for b in world.vault.catalog.bands()}
        with pytest.raises(CorruptionError, match="nothing pruned"), world.vault.lock():
            retention.prune(world.vault, allow_early_delete=True, now=lambda: world.clock)
        assert {b.band for b in world.vault.catalog.bands()} == bands
    finally:
        world.close()


def test_live_trees_of_a_deleted_band_move_to_a_carrier_band(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        two_versions(world)
        # A band holding a blob no version needs, whose catalog carries trees of v2 (as a
        # snapshot's last data band may): deleting it must not lose those trees for rebuilds.
        v2 = world.vault.catalog.version("c", 2)
        assert v2 is not None
        live = retention.live_set(world.vault, [v2])
        trees = {t.hex(): to_text(world.vault.catalog.tree_bytes(t) or b"") for t in live.trees}
        band_id = bandfmt.new_band_id()
        path = world.vault.spool_dir / f"{band_id}.tar.zst"
        writer = bandfmt.BandWriter(path, band_id, threads=1)
        data = b"garbage no version needs"
        import hashlib

        writer.add_blob(b"c/old", bandfmt.MemberMeta(0o644, 0, 0, 0), data, hashlib.sha256(data).digest())
        closed = writer.close({"collection": "c", "trees": trees})
        info = world.vault.upload_band(closed, "c")
        path.unlink()
        world.band_terms[info.band] = (info.storage_class, info.created_ns)
        world.clock += 200 * DAY
        result = world.prune(allow_early=False, dry_run=False)
        assert info.band in {b.band for b in result.deleted}
        assert result.carrier_band is not None and result.trees_rehomed == len(live.trees)
        doc = bandfmt.decode_sidecar(world.vault.store.get(sidecar_key(result.carrier_band)))
        assert {TreeId(bytes.fromhex(t)) for t in doc["trees"]} == live.trees
        assert doc["carries_trees_of"] == [info.band] and doc["blobs"] == []
        world.check()
        # The carrier is kept while its trees are in use: no new carrier on every prune.
        again = world.prune(allow_early=False, dry_run=False)
        assert again.carrier_band is None
        assert result.carrier_band in {b.band for b in again.of("keep-trees")}
        world.check()
    finally:
        world.close()


def test_price_table_and_charge() -> None:
    gib = 1024**3
    prices = Prices()
    assert retention.min_days("DEEP_ARCHIVE") == 180
    assert retention.early_delete_charge(gib, "DEEP_ARCHIVE", 0, prices) == pytest.approx(0.00099 * 6)
    assert retention.early_delete_charge(gib, "DEEP_ARCHIVE", 90, prices) == pytest.approx(0.00099 * 3)
    assert retention.early_delete_charge(gib, "DEEP_ARCHIVE", 200, prices) == 0
    assert retention.early_delete_charge(gib, "STANDARD", 0, prices) == 0
    # An unknown class is treated as strictly as Deep Archive, as dearly as the dearest.
    assert retention.min_days("NEW_CLASS") == 180
    assert prices.storage("NEW_CLASS") == max(prices.storage_per_gb_month.values())
    assert "2025" in prices.taken


def test_rebuild_after_prune_does_not_bring_pruned_content_back(file_vault: VaultEnv, tmp_path: Path) -> None:
    """The index objects written before a prune still list the pruned band. A NAS rebuilt
    from them must not believe the vault holds that content: a later snapshot would then
    skip storing it ("already there") and the backup would be silently incomplete."""
    from tests.test_index import second_machine

    src = file_vault.add_collection("photos", tier="warm")
    old = os.urandom(300_000)
    write(src / "old.raw", old)
    file_vault.run("init")
    file_vault.run("snapshot")
    (src / "old.raw").unlink()
    write(src / "new.raw", os.urandom(1000))
    file_vault.run("snapshot")
    file_vault.run("forget", "photos", "--keep", "1")
    assert file_vault.json("prune")["bytes_freed"] > len(old) // 2
    nas = second_machine(file_vault, tmp_path / "nas2")
    nas.run("index", "rebuild")
    assert [v["version"] for v in nas.versions("photos")] == [2]
    nas.run("check")
    write(src / "old.raw", old)  # the pruned content comes back to the source
    result = nas.json("snapshot")["collections"][0]
    assert result["stats"]["bytes_added"] == len(old)  # stored again, not "deduplicated"
    out = tmp_path / "out"
    nas.run("restore", "fetch", "photos", "--to", str(out))
    assert (out / "old.raw").read_bytes() == old
