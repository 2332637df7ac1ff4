"""compact: warm bands that are mostly garbage after forgets are rewritten, end to end.

A warm collection whose first version's band holds files later versions deleted (garbage
once v1 is forgotten) next to files they kept (live): compact copies the live ones into a
new band and deletes the old one. Checked with the real command on both stores: the dry
run's numbers, the bytes on the store, every kept version restored byte-identical (`diff
-r`), `check --read-data`, the new band read with `zstd | tar`, an index rebuild on a
second machine from the sidecars; a kill at each test point, then the next compact (or
prune) finishing; archived and cold bands never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_index import second_machine
from tests.test_retention import set_bands
from tests.trees import diff_r, write
from tests.vaultenv import VaultEnv

GONE = 4 * 400_000  # v1's files that v2 deletes
LIVE = 1_300_000 + 50_000  # v1's files every version keeps (one larger than a small blob)


def garbage_band_vault(env: VaultEnv, tmp: Path, name: str = "docs") -> dict[int, Path]:
    """v1: gone/a0..a3 and keep/{big,small}, one band; v2: gone/ deleted, new/x added;
    v3: new/y added. Then v1 is forgotten: its band is 54% garbage. Returns a copy of the
    source as each kept version saw it."""
    src = env.add_collection(name, tier="warm")
    for i in range(4):
        write(src / "gone" / f"a{i}.bin", os.urandom(GONE // 4))
    write(src / "keep" / "big.bin", os.urandom(1_300_000))
    write(src / "keep" / "small.bin", os.urandom(50_000))
    os.setxattr(src / "keep" / "small.bin", "user.note", b"kept in the tar header")
    env.run("init")
    env.run("snapshot")
    shutil.rmtree(src / "gone")
    write(src / "new" / "x.bin", os.urandom(100_000))
    env.run("snapshot")
    seen = {2: tmp / "v2"}
    shutil.copytree(src, seen[2], symlinks=True)
    write(src / "new" / "y.bin", os.urandom(100_000))
    env.run("snapshot")
    seen[3] = tmp / "v3"
    shutil.copytree(src, seen[3], symlinks=True)
    env.run("forget", name, "--keep", "2")
    return seen


def band_bytes(env: VaultEnv, tmp: Path) -> dict[str, int]:
    """Size of every band and sidecar object on the store."""
    return {k: env.fetch_object(k, tmp / "obj").stat().st_size for k in env.store_keys("bands/")}


def band_objects(env: VaultEnv) -> dict[str, Any]:
    """What identifies each band and sidecar object: its bytes (file://), or its ETag and
    modification time (S3; an archived object cannot be read)."""
    if env.bucket is None:
        return {k: (env.store_dir / k).read_bytes() for k in env.store_keys("bands/")}
    client = env.bucket.client()
    keys = env.store_keys("bands/")
    heads = {k: client.head_object(Bucket=env.bucket.name, Key="vault/" + k) for k in keys}
    return {k: (h["ETag"], h["LastModified"], h.get("StorageClass")) for k, h in heads.items()}


def all_restore(env: VaultEnv, tmp: Path, seen: dict[int, Path], name: str = "docs") -> None:
    for n, expected in seen.items():
        out = tmp / f"restored-{n}-{len(list(tmp.iterdir()))}"
        env.run("restore", "fetch", f"{name}@v{n}", "--to", str(out))
        assert diff_r(expected, out) == [], n


def check_clean(env: VaultEnv) -> None:
    check = env.json("check", "--read-data")
    assert check["ok"] is True, check["problems"]


def test_compact_rewrites_garbage_bands(vault_env: VaultEnv, tmp_path: Path) -> None:
    seen = garbage_band_vault(vault_env, tmp_path)
    # prune deletes nothing here: the band is partly in use.
    assert vault_env.json("prune")["deleted"] == []
    before = band_bytes(vault_env, tmp_path)
    plan = vault_env.json("compact", "--dry-run")
    [chosen] = plan["bands"]
    assert plan["dry_run"] is True and plan["new_bands"] == [] and plan["deleted"] == []
    assert (chosen["live_blobs"], chosen["dead_blobs"]) == (2, 4)
    assert chosen["garbage_fraction"] == pytest.approx(GONE / (GONE + LIVE), abs=1e-3)
    assert plan["bytes_rewritten"] == LIVE
    old = chosen["band"]
    assert plan["bytes_before"] == before[f"bands/{old}.tar.zst"] + before[f"bands/{old}.catalog.zst"]
    assert band_bytes(vault_env, tmp_path) == before  # a dry run changes nothing
    text = vault_env.run("compact", "--dry-run").stdout
    assert "would rewrite 1 band(s)" in text and old in text and "garbage 54%" in text

    done = vault_env.json("compact")
    assert [b["band"] for b in done["bands"]] == [old] and done["deleted"] == [old]
    assert done["bytes_rewritten"] == plan["bytes_rewritten"] and done["problems"] == []
    [new] = done["new_bands"]
    after = band_bytes(vault_env, tmp_path)
    assert set(after) == set(before) - {f"bands/{old}.tar.zst", f"bands/{old}.catalog.zst"} | {
        f"bands/{new}.tar.zst",
        f"bands/{new}.catalog.zst",
    }
    assert sum(before.values()) - sum(after.values()) == done["bytes_freed"]
    assert done["bytes_freed"] > GONE * 0.95  # random data: garbage bytes ≈ band bytes freed
    assert abs(done["bytes_freed"] - plan["bytes_freed"]) < 0.05 * plan["bytes_freed"]

    all_restore(vault_env, tmp_path, seen)
    check_clean(vault_env)
    # The new band is a plain tar stream: the live files (with their xattrs) and nothing else.
    band = vault_env.fetch_object(f"bands/{new}.tar.zst", tmp_path / "new.tar.zst")
    listing = subprocess.run(
        f"zstd -dc {band} | tar -t", shell=True, capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing == ["docs/keep/big.bin", "docs/keep/small.bin", ".vaultfs/catalog.json"]
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(f"zstd -dc {band} | tar -x --xattrs -C {unpacked}", shell=True, check=True)
    assert diff_r(seen[3] / "keep", unpacked / "docs" / "keep") == []
    assert os.getxattr(unpacked / "docs/keep/small.bin", "user.note") == b"kept in the tar header"
    # Its catalog carries the listing of keep/ (unchanged since v1, so stored only in v1's band).
    catalog = json.loads((unpacked / ".vaultfs" / "catalog.json").read_bytes())
    assert catalog["compacted_from"] == [old] and catalog["collection"] == "docs"
    assert len(catalog["trees"]) == done["trees_carried"] == 1
    assert "small.bin" in next(iter(catalog["trees"].values()))
    # Nothing left to do.
    again = vault_env.json("compact")
    assert again["bands"] == [] and again["deleted"] == []
    assert "nothing to compact" in vault_env.run("compact").stdout
    # A NAS rebuilt from the band catalogs (rung 3) finds the moved files in the new band.
    nas = second_machine(vault_env, tmp_path / "nas2")
    nas.run("index", "rebuild", "--from", "sidecars")
    all_restore(nas, tmp_path, seen)
    nas2 = second_machine(vault_env, tmp_path / "nas3")
    nas2.run("index", "rebuild")  # rung 2: the consolidated index
    all_restore(nas2, tmp_path, seen)


@pytest.mark.parametrize(
    ("point", "then"),
    [
        ("compact-band-closed", "compact"),
        ("compact-band-uploaded", "compact"),
        ("compact-band-uploaded", "prune"),
        ("compact-committed", "compact"),
        ("compact-committed", "prune"),
        ("index-publish", "compact"),
        ("compact-band-deleted", "compact"),
    ],
)
def test_kill_at_each_point_then_finish(file_vault: VaultEnv, tmp_path: Path, point: str, then: str) -> None:
    seen = garbage_band_vault(file_vault, tmp_path)
    [old] = [b["band"] for b in file_vault.json("compact", "--dry-run")["bands"]]
    proc = file_vault.run("compact", expect=None, env=file_vault.env(VAULTFS_TESTPOINTS=f"{point}=kill"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    all_restore(file_vault, tmp_path, seen)  # readable whatever the point
    file_vault.run(then)
    if then == "prune":
        file_vault.run("compact")  # whatever prune left to compact
    assert not [k for k in file_vault.store_keys("bands/") if old in k]
    assert file_vault.json("compact", "--dry-run")["bands"] == []
    assert list((file_vault.state_dir / "spool").iterdir()) == []
    all_restore(file_vault, tmp_path, seen)
    check_clean(file_vault)
    nas = second_machine(file_vault, tmp_path / "nas2")
    nas.run("index", "rebuild")
    all_restore(nas, tmp_path, seen)


def test_archived_and_cold_bands_are_never_touched(vault_env: VaultEnv, tmp_path: Path) -> None:
    garbage_band_vault(vault_env, tmp_path)
    cold = vault_env.add_collection("photos", tier="cold")
    write(cold / "a.raw", os.urandom(200_000))
    write(cold / "b.raw", os.urandom(20_000))
    vault_env.run("snapshot", "photos")
    (cold / "a.raw").unlink()
    vault_env.run("snapshot", "photos", expect=3)  # a deletion in a cold collection: a warning
    vault_env.run("accept", "photos")
    vault_env.run("forget", "photos", "--keep", "1")
    [old] = [b["band"] for b in vault_env.json("compact", "--dry-run")["bands"]]
    # The warm band is archived (on S3 too: what archiving does, a copy onto itself).
    if vault_env.bucket is not None:
        client = vault_env.bucket.client()
        key = f"vault/bands/{old}.tar.zst"
        client.copy_object(
            Bucket=vault_env.bucket.name,
            Key=key,
            StorageClass="DEEP_ARCHIVE",
            CopySource={"Bucket": vault_env.bucket.name, "Key": key},
        )
    set_bands(vault_env, [old], storage_class="DEEP_ARCHIVE", state="archived")
    before = band_objects(vault_env)
    result: Any = vault_env.json("compact", "--min-garbage", "10%")
    assert result["bands"] == [] and result["new_bands"] == []
    [skipped] = result["skipped"]
    assert skipped["band"] == old and "never touches archived bands" in skipped["why"]
    text = vault_env.run("compact").stdout
    assert "nothing to compact" in text and f"{old}  docs  garbage 54%" in text
    assert band_objects(vault_env) == before
    # The cold collection's band, partly garbage too, is not even considered.
    assert vault_env.json("prune", "--dry-run")["kept_partly_used"]
    assert all(b["collection"] == "docs" for b in result["skipped"])


def test_min_garbage_is_checked(file_vault: VaultEnv) -> None:
    file_vault.add_collection("docs", tier="warm")
    file_vault.run("init")
    for bad in ("150%", "0", "lots"):
        refused = file_vault.run("compact", "--min-garbage", bad, expect=2)
        assert "--min-garbage" in refused.stderr and "e.g. 50%" in refused.stderr
    assert file_vault.json("compact", "--min-garbage", "0.9")["min_garbage"] == 0.9
