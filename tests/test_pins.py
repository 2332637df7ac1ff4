"""Pinned good copies (docs/retention.md): in a cold collection the version holding the last
copy of content a newer version replaced or deleted is kept by forget, keep_versions and
prune until ``vaultfs accept`` says the change was intended."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from pathlib import Path

from tests.trees import write
from tests.vaultenv import VaultEnv

T0 = 1_600_000_000 * 10**9
GOOD = os.urandom(300_000)


def rotted_photo(env: VaultEnv) -> Path:
    """v1: a.jpg (300 kB, a band of its own with 64 KiB bands) and b.txt; then a.jpg rots in
    place (same size, bytes flipped, mtime moved): v2, with the warning."""
    env.band_size = "64KiB"
    src = env.add_collection("photos")
    write(src / "a.jpg", GOOD, T0)
    write(src / "b.txt", b"kept in every version\n", T0)
    env.run("init")
    env.run("snapshot")
    rot = bytearray(GOOD)
    rot[1000:1010] = bytes(b ^ 0xFF for b in rot[1000:1010])
    write(src / "a.jpg", bytes(rot), T0 + 10**9)
    return src


def test_rot_pins_the_good_copy_until_accepted(vault_env: VaultEnv, tmp_path: Path) -> None:
    rotted_photo(vault_env)
    v1_objects = set(vault_env.store_keys("bands/"))
    snap = vault_env.run("snapshot", expect=3)
    assert "1 file(s) modified" in snap.stderr and "modified: a.jpg" in snap.stderr
    assert "v1 keeps the old content and is pinned" in snap.stderr
    assert "`vaultfs accept photos@v2`" in snap.stderr
    # versions marks the pin, in the table and in JSON.
    text = vault_env.run("versions", "photos").stdout
    assert "PINNED" in text and "v1 pinned: holds 1 file replaced in v2" in text
    rows = vault_env.versions("photos")
    assert rows[0]["pinned"]["replaced"] == ["a.jpg"] and rows[0]["pinned"]["changed_in"] == 2
    assert rows[0]["pinned"]["release"] == "vaultfs accept photos@v2" and rows[1]["pinned"] is None
    # forget --keep 1 skips v1 and says why; prune keeps its bands.
    forgot = vault_env.json("forget", "photos", "--keep", "1")["collections"][0]
    assert forgot["forgotten"] == [] and forgot["kept"] == [1, 2]
    assert [p["version"] for p in forgot["pinned"]] == [1]
    assert "v1 pinned: holds 1 file replaced in v2" in vault_env.run("forget", "photos", "--keep", "1").stdout
    assert vault_env.json("prune", "--allow-early-delete")["deleted"] == []
    assert v1_objects <= set(vault_env.store_keys("bands/"))
    out = tmp_path / "v1"
    vault_env.run("restore", "fetch", "photos@v1", "a.jpg", "--to", str(out))
    assert (out / "a.jpg").read_bytes() == GOOD
    # accept records who and when (on the store and in versions --json), and releases v1.
    accepted = vault_env.json("accept", "photos@v2")
    assert accepted["recorded"] is True and accepted["released"] == [1] and accepted["pinned"] == []
    by = accepted["acceptance"]["by"]
    assert by == f"{pwd.getpwuid(os.geteuid()).pw_name}@{socket.gethostname()}"
    [key] = vault_env.store_keys("accepted/")
    assert key.startswith("accepted/photos/2-") and key.endswith(".json")
    rows = vault_env.versions("photos")
    assert rows[0]["pinned"] is None
    assert rows[1]["accepted"] == [
        {
            "up_to": 2,
            "paths": [],
            "by": by,
            "at": accepted["acceptance"]["at"],
            "at_ns": accepted["acceptance"]["at_ns"],
        }
    ]
    assert f"changes up to v2 accepted by {by}" in vault_env.run("versions", "photos").stdout
    # Now forget and prune drop v1 and the band that held the good bytes.
    assert vault_env.json("forget", "photos", "--keep", "1")["collections"][0]["forgotten"] == [1]
    pruned = vault_env.json("prune", "--allow-early-delete")
    gone = {f"bands/{b['band']}.tar.zst" for b in pruned["deleted"]}
    assert gone and gone <= v1_objects and not gone & set(vault_env.store_keys("bands/"))


def test_keep_versions_skips_a_deletion_pin_until_the_latest_is_accepted(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("photos")
    file_vault.config_path.write_text(
        file_vault.config_path.read_text().replace(
            "[collections.photos]\n", "[collections.photos]\nkeep_versions = 1\n"
        )
    )
    write(src / "2019" / "a.jpg", b"a" * 5000, T0)
    write(src / "2019" / "b.jpg", b"b" * 5000, T0)
    file_vault.run("init")
    file_vault.run("snapshot")
    (src / "2019" / "a.jpg").unlink()
    snap = file_vault.run("snapshot", expect=3)
    assert "v1 pinned: holds 1 file deleted in v2" in snap.stdout  # keep_versions skipped it
    assert [v["version"] for v in file_vault.versions("photos")] == [1, 2]
    # v3 adds a file: keep_versions forgets v2 (not pinned); v1 is now compared with v3.
    write(src / "2020" / "c.jpg", b"c" * 10, T0)
    file_vault.run("snapshot")
    rows = file_vault.versions("photos")
    assert [v["version"] for v in rows] == [1, 3]
    assert rows[0]["pinned"]["deleted"] == ["2019/a.jpg"] and rows[0]["pinned"]["changed_in"] == 3
    gone = file_vault.run("accept", "photos@v2", expect=2)
    assert "photos@v2 does not exist" in gone.stderr
    assert file_vault.json("accept", "photos")["released"] == [1]  # the latest: v3
    assert file_vault.json("forget")["collections"][0]["forgotten"] == [1]


def test_accept_under_a_path_releases_only_when_every_pinned_file_is_covered(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("photos")
    write(src / "2019" / "a.jpg", b"a" * 5000, T0)
    write(src / "2020" / "b.jpg", b"b" * 5000, T0)
    file_vault.run("init")
    file_vault.run("snapshot")
    write(src / "2019" / "a.jpg", b"A" * 5000, T0 + 10**9)
    write(src / "2020" / "b.jpg", b"B" * 5000, T0 + 10**9)
    file_vault.run("snapshot", expect=3)
    nothing = file_vault.run("accept", "photos", "nope", expect=2)
    assert "nothing to accept under 'nope'" in nothing.stderr and "Traceback" not in nothing.stderr
    assert "no collection named" in file_vault.run("accept", "albums", expect=2).stderr
    assert "photos@v9 does not exist" in file_vault.run("accept", "photos@v9", expect=2).stderr
    dry = file_vault.json("accept", "photos", "2019", "--dry-run")
    assert dry["dry_run"] is True and dry["released"] == [] and file_vault.store_keys("accepted/") == []
    partial = file_vault.json("accept", "photos", "2019")
    assert partial["acceptance"]["paths"] == ["2019"] and partial["released"] == []
    assert partial["pinned"][0]["replaced"] == ["2020/b.jpg"]
    assert "v1 pinned: holds 1 file replaced in v2" in file_vault.run("versions", "photos").stdout
    assert file_vault.json("forget", "photos", "--keep", "1")["collections"][0]["forgotten"] == []
    again = file_vault.run("accept", "photos", "2019/a.jpg", expect=2)
    assert "nothing to accept under '2019/a.jpg'" in again.stderr  # already accepted
    text = file_vault.run("accept", "photos", "2020").stdout
    assert "released v1" in text
    assert file_vault.json("forget", "photos", "--keep", "1")["collections"][0]["forgotten"] == [1]
    assert len(file_vault.store_keys("accepted/")) == 2


def test_content_brought_back_releases_the_pin(file_vault: VaultEnv) -> None:
    """Deleted in v2, restored in v3: v2 is not pinned, and once it is forgotten v1 is not
    the last copy any more (v3 holds the same bytes), so forget drops both."""
    src = file_vault.add_collection("photos")
    write(src / "a.jpg", b"a" * 5000, T0)
    write(src / "b.jpg", b"b" * 10, T0)
    file_vault.run("init")
    file_vault.run("snapshot")
    (src / "a.jpg").unlink()
    file_vault.run("snapshot", expect=3)
    write(src / "a.jpg", b"a" * 5000, T0)
    file_vault.run("snapshot")
    assert [v["pinned"] is not None for v in file_vault.versions("photos")] == [True, False, False]
    assert file_vault.json("forget", "photos", "--keep", "1")["collections"][0]["forgotten"] == [1, 2]


def test_a_warm_collection_is_never_pinned(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")
    write(src / "main.c", b"int main;\n", T0)
    file_vault.run("init")
    file_vault.run("snapshot")
    write(src / "main.c", b"int main(void);\n", T0 + 10**9)
    file_vault.run("snapshot")
    assert [v["pinned"] for v in file_vault.versions("code")] == [None, None]
    refused = file_vault.run("accept", "code", expect=2)
    assert "code is warm" in refused.stderr
    assert file_vault.json("forget", "code", "--keep", "1")["collections"][0]["forgotten"] == [1]


def test_acceptances_survive_the_loss_of_the_catalog(file_vault: VaultEnv) -> None:
    rotted_photo(file_vault)
    file_vault.run("snapshot", expect=3)
    accepted = file_vault.json("accept", "photos")["acceptance"]
    shutil.rmtree(file_vault.state_dir)
    rebuilt = file_vault.json("index", "rebuild")
    assert "brought back 1 acceptance(s) of changes from the store" in rebuilt["notes"]
    rows = file_vault.versions("photos")
    assert rows[0]["pinned"] is None and rows[1]["accepted"] == [accepted]
    assert file_vault.json("forget", "photos", "--keep", "1")["collections"][0]["forgotten"] == [1]


def test_an_acceptance_keeps_covering_after_the_version_between_is_forgotten(file_vault: VaultEnv) -> None:
    """v1 → v2 replaces a.jpg (accepted under a.jpg up to v2) and b.jpg (not accepted);
    v3 changes nothing of them. Forgetting v2 compares v1 with v3: a.jpg's change is
    still the accepted one, so only b.jpg pins v1."""
    src = file_vault.add_collection("photos")
    write(src / "a.jpg", b"a" * 5000, T0)
    write(src / "b.jpg", b"b" * 5000, T0)
    file_vault.run("init")
    file_vault.run("snapshot")
    write(src / "a.jpg", b"A" * 5000, T0 + 10**9)
    write(src / "b.jpg", b"B" * 5000, T0 + 10**9)
    file_vault.run("snapshot", expect=3)
    assert file_vault.json("accept", "photos@v2", "a.jpg")["pinned"][0]["replaced"] == ["b.jpg"]
    write(src / "c.jpg", b"c" * 10, T0)
    file_vault.run("snapshot")
    assert file_vault.json("forget", "photos", "--keep", "1")["collections"][0]["forgotten"] == [2]
    [v1, v3] = file_vault.versions("photos")
    assert v1["pinned"]["changed_in"] == 3 and v1["pinned"]["replaced"] == ["b.jpg"]
    assert v3["pinned"] is None
    assert "v1 pinned: holds 1 file replaced in v3" in file_vault.run("versions", "photos").stdout
    nothing = file_vault.run("accept", "photos", "a.jpg", expect=2)  # already accepted
    assert "nothing to accept under 'a.jpg'" in nothing.stderr
    assert file_vault.json("accept", "photos", "b.jpg")["released"] == [1]
