"""Rough edges found by using vaultfs as a NAS owner would (issue 15, point 6).

Each test runs the real command the way the edge was met, and checks what a
person (or a script) relies on: the exit status, the one-line error, what is
left on disk, the numbers in the summary.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.test_index import second_machine
from tests.trees import diff_r, write
from tests.vaultenv import VaultEnv


def two_versions(env: VaultEnv) -> Path:
    src = env.add_collection("photos")
    write(src / "a.txt", b"hello\n")
    env.run("init")
    env.run("snapshot")
    write(src / "b.txt", b"world\n")
    env.run("snapshot")
    return src


def test_init_on_a_store_with_versions_writes_nothing_locally(file_vault: VaultEnv, tmp_path: Path) -> None:
    two_versions(file_vault)
    other = second_machine(file_vault, tmp_path / "nas2")
    refused = other.run("init", expect=2)
    assert "already holds vault" in refused.stderr and "`vaultfs index rebuild`" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not other.state_dir.exists()  # no half-made state dir that every command trips on
    # What the error says to do works, and so does everything after it.
    other.run("index", "rebuild")
    assert [v["version"] for v in other.versions("photos")] == [1, 2]
    other.run("init")  # idempotent on the adopted vault


def test_a_half_made_state_dir_says_what_to_do(file_vault: VaultEnv, tmp_path: Path) -> None:
    """A state dir an older init left behind (a catalog that names no vault)."""
    from vaultfs.catalog import Catalog

    two_versions(file_vault)
    other = second_machine(file_vault, tmp_path / "nas2")
    other.state_dir.mkdir(mode=0o700)
    Catalog(other.state_dir / "catalog.lmdb").close()
    proc = other.run("versions", "photos", expect=1)
    assert "belongs to store None" not in proc.stderr
    assert "holds no vault" in proc.stderr and "`vaultfs init`" in proc.stderr
    rebuilt = other.run("index", "rebuild")
    assert "another vault" not in rebuilt.stdout
    assert "rung 1 (local catalog) not used: it names no vault" in rebuilt.stdout
    assert [v["version"] for v in other.versions("photos")] == [1, 2]


def test_restore_without_arguments_asks_only_for_the_collection(file_vault: VaultEnv) -> None:
    file_vault.add_collection("photos")
    for action in ("start", "plan", "fetch"):
        proc = file_vault.run("restore", action, expect=2)
        last = proc.stderr.strip().splitlines()[-1]
        assert "required: COLLECTION[@vN]" in last, last
        assert "PATH" not in last, last


def test_versions_without_a_collection_lists_every_collection(file_vault: VaultEnv) -> None:
    two_versions(file_vault)
    docs = file_vault.add_collection("docs")
    write(docs / "x.txt", b"x\n")
    file_vault.run("snapshot", "docs")
    file_vault.add_collection("empty")
    listed = file_vault.json("versions")
    assert [(c["collection"], [v["version"] for v in c["versions"]]) for c in listed["collections"]] == [
        ("photos", [1, 2]),
        ("docs", [1]),
        ("empty", []),
    ]
    text = file_vault.run("versions").stdout
    assert text.index("photos:") < text.index("docs:") < text.index("empty: no versions yet")
    assert text.count("VERSION") == 2
    # One collection: the same document as before.
    one = file_vault.json("versions", "docs")
    assert one["collection"] == "docs" and [v["version"] for v in one["versions"]] == [1]


def test_index_rebuild_counts_every_version_and_says_when_problems_remain(file_vault: VaultEnv) -> None:
    two_versions(file_vault)
    kept = file_vault.run("index", "rebuild")
    assert "local index verified using rung 1 (local catalog): 2 version(s)" in kept.stdout
    assert file_vault.json("index", "rebuild")["versions"] == ["photos@v1", "photos@v2"]
    # An object under bands/ that is no band: a problem (exit 1), and the summary says so.
    (file_vault.store_dir / "bands" / "junk.tar.zst").write_bytes(b"junk")
    proc = file_vault.run("index", "rebuild", expect=1)
    assert "problem: store object 'bands/junk.tar.zst'" in proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("local index verified using rung 1 (local catalog): 2 version(s)")
    assert "1 problem(s) remain" in summary, summary


def test_one_dated_price_table_for_prune_and_restore(file_vault: VaultEnv) -> None:
    file_vault.extra_config = (
        '[prices]\ntaken = "2031-02, my region"\nstorage_per_gb_month = { DEEP_ARCHIVE = 0.5 }\n'
    )
    two_versions(file_vault)
    pruned = file_vault.json("prune", "--dry-run")
    assert pruned["prices"]["as_of"] == "2031-02, my region"
    assert pruned["prices"]["usd_per_gb_month"]["DEEP_ARCHIVE"] == 0.5
    assert pruned["prices"]["usd_per_gb_month"]["STANDARD"] == 0.023  # the rest: defaults
    assert file_vault.json("restore", "plan", "photos")["prices_taken"] == "2031-02, my region"
    assert "prices: 2031-02, my region" in file_vault.run("prune", "--dry-run").stdout
    file_vault.extra_config = "[prices]\nstorage_per_gb_month = { DEEP_ARCHIVE = -1 }\n"
    file_vault.write_config()
    proc = file_vault.run("versions", expect=2)
    assert "[prices.storage_per_gb_month].DEEP_ARCHIVE = -1" in proc.stderr


def test_fetch_refuses_to_overwrite_different_files(file_vault: VaultEnv, tmp_path: Path) -> None:
    src = file_vault.add_collection("photos")
    write(src / "a.txt", b"alpha\n")
    write(src / "sub" / "b.txt", b"bravo\n")
    write(src / "sub" / "c.txt", b"charlie\n")
    file_vault.run("init")
    file_vault.run("snapshot")
    out = tmp_path / "out"
    file_vault.run("restore", "fetch", "photos", "--to", str(out))
    assert diff_r(src, out) == []
    # Again into the same directory: identical files are kept (hashed, not rewritten).
    inode = (out / "sub" / "b.txt").stat().st_ino
    again = file_vault.json("restore", "fetch", "photos", "--to", str(out))
    assert again["already_present"] == 3 and again["files"] == 3 and again["exit_code"] == 0
    assert (out / "sub" / "b.txt").stat().st_ino == inode
    # A file changed since, and one in the way: refused, nothing written.
    write(out / "sub" / "b.txt", b"mine, newer\n")
    write(out / "sub" / "c.txt", b"mine too\n")
    write(out / "kept.txt", b"not in the version\n")
    proc = file_vault.run("restore", "fetch", "photos", "--to", str(out), expect=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "2 file(s) in" in lines[0] and "(the first: sub/b.txt)" in lines[0] and "--overwrite" in lines[0]
    assert (out / "sub" / "b.txt").read_bytes() == b"mine, newer\n"
    assert (out / "sub" / "c.txt").read_bytes() == b"mine too\n"
    assert (
        subprocess.run(["find", str(out), "-name", ".vaultfs-restore-*"], capture_output=True).stdout == b""
    )
    # Only the paths asked for count: a.txt alone is the same, so it restores.
    file_vault.run("restore", "fetch", "photos", "a.txt", "--to", str(out))
    # --overwrite replaces them; files the version does not have are left alone.
    file_vault.run("restore", "fetch", "photos", "--to", str(out), "--overwrite")
    assert diff_r(src, out) == [f"Only in {out}: kept.txt"]


def test_a_full_target_disk_is_one_line_and_a_rerun_finishes(file_vault: VaultEnv, tmp_path: Path) -> None:
    """ENOSPC while writing the target: a one-line error (no internal error), and once there
    is room the same command finishes, keeping what was already restored."""
    src = file_vault.add_collection("docs", tier="warm")
    (src / "a-small.txt").write_bytes(b"small file")
    (src / "b-big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    file_vault.run("init")
    file_vault.run("snapshot")
    target = tmp_path / "tiny"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
    try:
        full = file_vault.run("restore", "fetch", "docs@v1", "--to", str(target), expect=1)
        assert full.stderr.startswith(f"vaultfs: error: cannot write into {target}: No space left")
        assert "internal error" not in full.stderr and len(full.stderr.splitlines()) == 1
        assert not [p.name for p in target.iterdir() if p.name.startswith(".vaultfs-restore")]
        subprocess.run(["mount", "-o", "remount,size=8m", str(target)], check=True)
        file_vault.run("restore", "fetch", "docs@v1", "--to", str(target))
        assert (target / "b-big.bin").read_bytes() == (src / "b-big.bin").read_bytes()
        assert (target / "a-small.txt").read_bytes() == b"small file"
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_paths_after_an_option_are_paths(file_vault: VaultEnv, tmp_path: Path) -> None:
    """`restore fetch docs --to DIR a.txt`: PATHs after --to are PATHs (argparse alone calls
    them unrecognized); a stray option is still a usage error."""
    src = file_vault.add_collection("docs", tier="warm")
    (src / "a.txt").write_bytes(b"a")
    (src / "b.txt").write_bytes(b"b")
    file_vault.run("init")
    file_vault.run("snapshot")
    out = tmp_path / "out"
    file_vault.run("restore", "fetch", "docs", "--to", str(out), "a.txt")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    bad = file_vault.run("restore", "fetch", "docs", "--to", str(out), "--bogus", expect=2)
    assert "unrecognized arguments: --bogus" in bad.stderr
