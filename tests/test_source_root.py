"""A source that looks wrong as a whole: an empty or missing root, a mass removal.

An unmounted volume or a failing disk looks to a snapshot like a collection whose
files were deleted. An empty root is refused (unless ``allow_empty = true``), and a
snapshot that removes more than ``max_removed`` of the previous version's files warns
loudly (exit 3) while still writing the version.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.trees import write
from tests.vaultenv import VaultEnv

TIERS = ["warm", "cold"]


def set_keys(env: VaultEnv, collection: str, *lines: str) -> None:
    """Add keys to ``[collections.NAME]`` of the test's config file."""
    header = f"[collections.{collection}]\n"
    text = env.config_path.read_text()
    assert header in text
    env.config_path.write_text(text.replace(header, header + "".join(f"{ln}\n" for ln in lines)))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("vaultfs: error:")]


@pytest.mark.parametrize("tier", TIERS)
def test_empty_root_is_refused_and_the_others_still_snapshot(vault_env: VaultEnv, tier: str) -> None:
    empty = vault_env.add_collection("photos", tier=tier)
    docs = vault_env.add_collection("docs", tier=tier)
    write(docs / "a.txt", b"a")
    vault_env.run("init")
    proc = vault_env.run("snapshot", expect=1)
    [line] = error_lines(proc.stderr)
    assert f"collection photos: {empty} is empty (is the volume mounted?)" in line
    assert "allow_empty = true in [collections.photos]" in line
    assert "Traceback" not in proc.stderr
    assert "docs: v1 created: 1 files" in proc.stdout  # after photos, in the same run
    assert vault_env.versions("photos") == []
    assert [v["version"] for v in vault_env.versions("docs")] == [1]
    result = vault_env.json("snapshot", expect=1)
    assert result["exit_code"] == 1 and len(result["refused"]) == 1
    assert "photos" in result["refused"][0] and "is empty" in result["refused"][0]
    assert [c["collection"] for c in result["collections"]] == ["docs"]
    assert vault_env.versions("photos") == []
    # Said to be meant empty: an empty version, and no warning.
    set_keys(vault_env, "photos", "allow_empty = true")
    proc = vault_env.run("snapshot", expect=0)
    assert "photos: v1 created: 0 files" in proc.stdout and proc.stderr == ""
    assert [v["files"] for v in vault_env.versions("photos")] == [0]


def test_missing_or_unlistable_root_is_refused_and_the_others_still_snapshot(
    file_vault: VaultEnv,
) -> None:
    gone = file_vault.add_collection("photos")
    docs = file_vault.add_collection("docs", tier="warm")
    write(gone / "a.raw", b"a")
    write(docs / "a.txt", b"a")
    file_vault.run("init")
    file_vault.run("snapshot")
    shutil.rmtree(gone)
    write(docs / "b.txt", b"b")
    proc = file_vault.run("snapshot", expect=1)
    [line] = error_lines(proc.stderr)
    assert f"collection photos: {gone} does not exist (is the volume mounted?)" in line
    assert "[collections.photos].path" in line and "Traceback" not in proc.stderr
    assert [v["version"] for v in file_vault.versions("docs")] == [1, 2]
    assert [v["version"] for v in file_vault.versions("photos")] == [1]
    gone.write_bytes(b"a file where the directory was")
    [line] = error_lines(file_vault.run("snapshot", "photos", expect=1).stderr)
    assert f"collection photos: {gone} is not a directory" in line
    assert [v["version"] for v in file_vault.versions("photos")] == [1]


def removal_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "max_removed" in line]


@pytest.mark.parametrize("tier", TIERS)
def test_removing_more_than_max_removed_warns(vault_env: VaultEnv, tier: str) -> None:
    src = vault_env.add_collection("photos", tier=tier)
    for i in range(10):
        write(src / f"img{i}.raw", f"image {i}".encode())
    vault_env.run("init")
    vault_env.run("snapshot")
    for i in range(4):  # 40 % of v1's files: ordinary (on a cold collection: the usual warning)
        (src / f"img{i}.raw").unlink()
    proc = vault_env.run("snapshot", expect=3 if tier == "cold" else 0)
    assert removal_warnings(proc.stderr) == []
    for i in range(10, 14):
        write(src / f"img{i}.raw", f"image {i}".encode())
    vault_env.run("snapshot", expect=0)  # v3: 10 files again
    for i in range(4, 10):  # 60 % of v3's files
        (src / f"img{i}.raw").unlink()
    result = vault_env.json("snapshot", expect=3)
    [photos] = result["collections"]
    assert photos["mass_removal"] == {
        "removed": 6,
        "previous_files": 10,
        "previous_version": 3,
        "max_removed": "50%",
    }
    assert photos["version"] == 4  # still written: v3 keeps the files
    assert [v["files"] for v in vault_env.versions("photos")] == [10, 6, 10, 4]
    # The same, on the terminal: one line naming the collection and the counts.
    for i in range(14, 24):
        write(src / f"new{i}.raw", f"image {i}".encode())
    vault_env.run("snapshot", expect=0)  # v5: 14 files
    for path in sorted(src.iterdir())[:8]:  # 8 of 14: 57 %
        path.unlink()
    proc = vault_env.run("snapshot", expect=3)
    [line] = removal_warnings(proc.stderr)
    assert line.startswith("WARNING: photos: this snapshot removes 8 of the 14 files of v5 ")
    assert "v5 keeps them" in line and "raise [collections.photos].max_removed" in line


def test_a_share_does_not_apply_to_a_handful_of_files(file_vault: VaultEnv) -> None:
    """Renaming the one file of a small collection is not a mass removal; a number is."""
    src = file_vault.add_collection("notes", tier="warm")
    for i in range(9):
        write(src / f"n{i}.txt", f"{i}\n".encode())
    file_vault.run("init")
    file_vault.run("snapshot")
    for i in range(8):  # 8 of 9 (89 %), but 9 files are below the share's floor of 10
        (src / f"n{i}.txt").rename(src / f"m{i}.txt")
    assert file_vault.json("snapshot")["collections"][0]["mass_removal"] is None
    set_keys(file_vault, "notes", "max_removed = 5")
    for i in range(8):
        (src / f"m{i}.txt").unlink()
    proc = file_vault.run("snapshot", expect=3)
    [line] = removal_warnings(proc.stderr)
    assert "removes 8 of the 9 files of v2 (more than max_removed = 5)" in line


def test_max_removed_as_a_number_of_files(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")
    set_keys(file_vault, "code", "max_removed = 2")
    for i in range(100):
        write(src / f"f{i}.py", f"{i}\n".encode())
    file_vault.run("init")
    file_vault.run("snapshot")
    for i in range(2):  # 2 files: at the limit, not above
        (src / f"f{i}.py").unlink()
    assert json.loads(file_vault.run("snapshot", "--json").stdout)["collections"][0]["mass_removal"] is None
    for i in range(2, 5):  # 3 files (3 %): above a limit of 2 files
        (src / f"f{i}.py").unlink()
    proc = file_vault.run("snapshot", expect=3)
    [line] = removal_warnings(proc.stderr)
    assert "removes 3 of the 98 files of v2 (more than max_removed = 2)" in line


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('allow_empty = "yes"', "[collections.photos].allow_empty = 'yes': expected true or false"),
        ("allow_empty = 1", "[collections.photos].allow_empty = 1: expected true or false"),
        ('max_removed = "150%"', "[collections.photos].max_removed = '150%': a percentage runs"),
        ('max_removed = "-5%"', "[collections.photos].max_removed = '-5%': expected a percentage"),
        ('max_removed = "half"', "[collections.photos].max_removed = 'half': expected a percentage"),
        ('max_removed = "50"', "[collections.photos].max_removed = '50': expected a percentage"),
        ("max_removed = 0.5", "[collections.photos].max_removed = 0.5: expected a percentage"),
        ("max_removed = -1", "[collections.photos].max_removed = -1: a number of files cannot be"),
        ("max_removed = true", "[collections.photos].max_removed = True: expected a percentage"),
        ("max_remove = 3", "unknown key [collections.photos].max_remove"),
    ],
)
def test_bad_values_of_the_new_keys(file_vault: VaultEnv, line: str, says: str) -> None:
    file_vault.add_collection("photos")
    set_keys(file_vault, "photos", line)
    proc = file_vault.run("init", expect=2)
    [error] = proc.stderr.splitlines()
    assert error.startswith("vaultfs: error: ") and says in error, error


def test_good_values_of_max_removed(file_vault: VaultEnv) -> None:
    file_vault.add_collection("photos")
    for value in ('"0%"', '"12.5%"', '"100%"', "0", "5000"):
        set_keys(file_vault, "photos", f"max_removed = {value}", "allow_empty = false")
        file_vault.run("init")
        file_vault.write_config()


def test_a_root_whose_path_has_braces_is_an_ordinary_path(file_vault: VaultEnv) -> None:
    """Messages name the root with f-strings, never ``str.format`` (a ``{`` in a path was
    once a KeyError, an "internal error" instead of the message)."""
    root = file_vault.tmp / "src" / "shots {2024} {name}"
    file_vault.collections["photos"] = (root, "cold")
    file_vault.write_config()
    file_vault.run("init")
    proc = file_vault.run("snapshot", expect=1)
    [line] = error_lines(proc.stderr)
    assert f"collection photos: {root} does not exist (is the volume mounted?)" in line
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    write(root / "{a}.raw", b"raw {0} bytes")
    proc = file_vault.run("snapshot", expect=0)
    assert "photos: v1 created: 1 files" in proc.stdout
    out = file_vault.tmp / "out {x}"
    file_vault.run("restore", "fetch", "photos@v1", "--to", str(out))
    assert (out / "{a}.raw").read_bytes() == b"raw {0} bytes"
