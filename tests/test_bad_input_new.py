"""Bad input on the commands and config keys of the scrub, ignore, keep-rule, compact and
warm-tier work: each gets a clear one-line answer and the exit status docs/cli.md gives,
nothing hangs, nothing is done twice or silently more than asked.
"""

from __future__ import annotations

import os
import subprocess

from tests.test_ignore import GIT_ENV, git, restored_files
from tests.trees import write
from tests.vaultenv import VaultEnv


def test_ignore_files_that_are_not_regular_files_are_noted_and_never_read(file_vault: VaultEnv) -> None:
    """A ``.gitignore`` that is a FIFO would block the snapshot forever (waiting for a writer),
    one that is a symlink to ``/dev/zero`` would fill the memory, and git itself never follows
    a symlinked ``.gitignore`` in the work tree: each is noted and its rules are not applied,
    so the files kept are git's."""
    src = file_vault.add_collection("code", tier="warm")
    write(src / "main.c", b"int main;\n")
    git(src, "init", "-q")
    write(src / "rules.txt", b"*.q\n")
    for d in ("fifo", "zero", "link"):
        write(src / d / "a.q", b"git keeps this")
    os.symlink("../rules.txt", src / "link/.gitignore")
    git_keeps = subprocess.run(  # asked before the FIFOs are made: git would block on them
        ["git", "-C", str(src), "ls-files", "--others", "--exclude-standard", "--", "link"],
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout.split()
    assert git_keeps == ["link/.gitignore", "link/a.q"]  # git does not follow link/.gitignore
    os.mkfifo(src / "fifo/.gitignore")
    os.symlink("/dev/zero", src / "zero/.gitignore")
    os.mkfifo(src / ".git/info/exclude.fifo")
    (src / ".git/info/exclude").unlink(missing_ok=True)
    os.symlink("exclude.fifo", src / ".git/info/exclude")  # git follows this one: still no hang
    file_vault.run("init")
    proc = file_vault.run("snapshot", "code", env=file_vault.env(**GIT_ENV))
    said = proc.stdout + proc.stderr
    assert "cannot read fifo/.gitignore (a FIFO, not a regular file)" in said
    assert "cannot read zero/.gitignore (a symbolic link: git does not follow it)" in said
    assert "cannot read link/.gitignore (a symbolic link: git does not follow it)" in said
    assert "cannot read .git/info/exclude (a FIFO, not a regular file)" in said
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    kept = restored_files(file_vault, "code")
    assert {"fifo/a.q", "zero/a.q", "link/a.q"} <= kept
    out = file_vault.run("explain", "code", "link/a.q", env=file_vault.env(**GIT_ENV)).stdout
    assert out.splitlines()[0] == "link/a.q — kept (no rule matches)"


def test_explain_the_collection_root_says_it_is_kept(file_vault: VaultEnv) -> None:
    """``.`` (or the collection's path itself) is a path of the collection, not one outside it."""
    src = file_vault.add_collection("code", tier="warm")
    write(src / "main.c", b"int main;\n")
    for arg in (".", str(src), f"{src}/"):
        proc = file_vault.run("explain", "code", arg)
        assert proc.stdout == ". — kept: the collection's path itself is never left out\n", arg
    proc = file_vault.run("explain", "code", str(src.parent), expect=2)
    assert proc.stderr.startswith(f"vaultfs: error: {src.parent}: not under {src}")


def test_a_collection_named_twice_is_scrubbed_once(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("photos")
    write(src / "a.raw", b"a" * 1000)
    write(src / "b.raw", b"b" * 1000)
    file_vault.run("init")
    file_vault.run("snapshot")
    doc = file_vault.json("scrub", "photos", "photos")
    assert (doc["planned_files"], doc["verified_files"], doc["read_bytes"]) == (2, 2, 2000)


def test_accept_refuses_an_empty_path_and_escapes_names(file_vault: VaultEnv) -> None:
    """``vaultfs accept photos@v2 "$DIR"`` with an empty DIR must not release every pin."""
    src = file_vault.add_collection("photos")
    write(src / "a.jpg", b"a")
    write(src / "b.jpg", b"b")
    file_vault.run("init")
    file_vault.run("snapshot")
    (src / "a.jpg").unlink()
    file_vault.run("snapshot", expect=3)
    proc = file_vault.run("accept", "photos@v2", "", expect=2)
    assert proc.stderr == (
        "vaultfs: error: an empty PATH: give a path inside the collection, "
        "or leave PATH out to accept every change up to the version\n"
    )
    assert file_vault.json("accept", "photos@v2", "--dry-run")["released"] == [1]  # still pinned
    proc = file_vault.run("accept", "photos@v2", os.fsdecode(b"\xffx\n"), expect=2)
    assert proc.stderr.startswith("vaultfs: error: nothing to accept under '\\xffx\\n': ")
    proc = file_vault.run("accept", "photos@v2", os.fsdecode(b"\xff/../x"), expect=2)
    assert proc.stderr.startswith("vaultfs: error: path '\\xff/../x': use a path inside the collection")


def test_compact_refuses_a_garbage_share_below_one_percent(file_vault: VaultEnv) -> None:
    file_vault.add_collection("code", tier="warm")
    file_vault.run("init")
    for share in ("0.5%", "0.001", "0"):
        proc = file_vault.run("compact", "--dry-run", "--min-garbage", share, expect=2)
        assert f"'{share}': expected a share of garbage from 1% to 100%" in proc.stderr
    file_vault.run("compact", "--dry-run", "--min-garbage", "1%")


def test_scrub_keys_on_a_warm_collection_are_refused(file_vault: VaultEnv) -> None:
    """A scrub setting that would never apply is one the owner believes in and does not have."""
    file_vault.add_collection("code", tier="warm")
    file_vault.run("init")
    for key, value in (("scrub_per_snapshot", '"2%"'), ("scrub_days", "7")):
        file_vault.extra_config = f"{key} = {value}\n"
        file_vault.write_config()
        proc = file_vault.run("versions", expect=2)
        assert proc.stderr == (
            f"vaultfs: error: {file_vault.config_path}: [collections.code].{key}: only for cold "
            "collections (a warm collection's files are re-read by its snapshots); remove it or "
            'set tier = "cold"\n'
        )
    file_vault.extra_config = 'scrub_per_snapshot = "0%"\n'  # off says nothing false
    file_vault.write_config()
    file_vault.run("versions")


def test_prices_must_be_numbers_of_dollars_and_hours(file_vault: VaultEnv) -> None:
    """TOML has ``nan`` and ``inf``; ``nan < 0`` is false, so a sign check alone let them
    through, and every estimate then said ``$nan``. Hours are a wait: at least 1."""
    file_vault.add_collection("photos")
    file_vault.run("init")
    for line, said in (
        ("bulk_per_gb = nan", "[prices].bulk_per_gb = nan: expected a price in dollars, 0 or more"),
        ("standard_per_gb = inf", "[prices].standard_per_gb = inf: expected a price in dollars, 0 or more"),
        ("storage_per_gb_month = { STANDARD = nan }", "[prices.storage_per_gb_month].STANDARD = nan: "),
        ("bulk_hours = -3", "[prices].bulk_hours = -3: expected a number of hours, at least 1"),
        ("standard_hours = 0", "[prices].standard_hours = 0: expected a number of hours, at least 1"),
    ):
        file_vault.extra_config = f"[prices]\n{line}\n"
        file_vault.write_config()
        proc = file_vault.run("versions", expect=2)
        assert proc.stderr.startswith(f"vaultfs: error: {file_vault.config_path}: {said}"), proc.stderr
        assert proc.stderr.count("\n") == 1


def test_explain_a_path_through_a_symlink_says_the_snapshot_keeps_the_link(file_vault: VaultEnv) -> None:
    src = file_vault.add_collection("code", tier="warm")
    write(src / "main.c", b"int main;\n")
    write(file_vault.tmp / "elsewhere/x.c", b"not in the collection")
    os.symlink(file_vault.tmp / "elsewhere", src / "link")
    proc = file_vault.run("explain", "code", "link", "link/x.c", expect=2)
    assert proc.stdout == "link — kept (no rule matches)\n"
    assert proc.stderr == (
        "vaultfs: error: link/x.c: link is a symbolic link: a snapshot keeps the link, "
        "not what it points to\n"
    )
