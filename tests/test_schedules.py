"""contrib/'s systemd units and timers (docs/schedules.md): valid for systemd, every name
they refer to exists, every command they run is one vaultfs accepts."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vaultenv import REPO
from vaultfs.errors import EXIT_BITROT, EXIT_OK, EXIT_WARNINGS

CONTRIB = REPO / "contrib"
UNITS = sorted(p for p in CONTRIB.iterdir() if p.suffix in (".service", ".timer"))
SERVICES = [p for p in UNITS if p.suffix == ".service" and not p.name.endswith("@.service")]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def exec_lines(path: Path) -> list[list[str]]:
    svc = unit(path)["Service"]
    return [shlex.split(svc[k].lstrip("-")) for k in ("ExecStartPre", "ExecStart", "ExecStop") if k in svc]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own check, with `vaultfs` where the units say systemd finds it: a private
    mount namespace puts this checkout's command on /usr/local/bin for the check only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vaultfs").symlink_to(Path(sys.executable).parent / "vaultfs")
    script = f"mount --bind {bin_dir} /usr/local/bin && exec systemd-analyze verify --man=no " + " ".join(
        shlex.quote(str(p)) for p in UNITS
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_every_unit_names_what_exists() -> None:
    names = {p.name for p in CONTRIB.iterdir()}
    for path in UNITS:
        u = unit(path)
        if path.suffix == ".timer":
            assert u["Timer"]["Unit"] == path.with_suffix(".service").name
            assert u["Timer"]["Unit"] in names and u["Install"]["WantedBy"] == "timers.target"
    for path in SERVICES:
        on_failure = unit(path)["Unit"]["OnFailure"]
        assert on_failure == "vaultfs-failure@%N.service" and "vaultfs-failure@.service" in names
    timed = {p.with_suffix(".service").name for p in UNITS if p.suffix == ".timer"}
    assert timed == {
        "vaultfs-snapshot.service",
        "vaultfs-scrub.service",
        "vaultfs-check.service",
        "vaultfs-check-read-data.service",
    }


def test_commands_are_vaultfs_without_a_hard_coded_path() -> None:
    """`vaultfs` by name (systemd's search path; docs/schedules.md, docs/mount.md), never
    /usr/local/bin/vaultfs; other commands by absolute paths that exist."""
    for path in [*SERVICES, CONTRIB / "vaultfs-failure@.service"]:
        assert "/usr/local/bin/vaultfs " not in path.read_text().split("[Unit]")[1]
        for argv in exec_lines(path):
            assert argv[0] == "vaultfs" or (argv[0].startswith("/") and Path(argv[0]).exists()), argv


def test_exit_3_is_success_only_where_it_means_warnings() -> None:
    """snapshot 3: files skipped or a cold collection edited; check 3: archived bands not
    read. scrub 3: files could not be read — that one must fail the unit (and run
    OnFailure=). Bit rot, from scrub or a snapshot's scrub slice, is its own status, and
    no unit counts it as success."""
    success = {p.name: unit(p)["Service"].get("SuccessExitStatus") for p in SERVICES}
    assert EXIT_BITROT not in (EXIT_OK, EXIT_WARNINGS)
    for name, statuses in success.items():
        assert str(EXIT_BITROT) not in (statuses or "").split(), name
    assert success == {
        "vaultfs-check-read-data.service": "3",
        "vaultfs-check.service": "3",
        "vaultfs-mount.service": None,
        "vaultfs-scrub.service": None,
        "vaultfs-snapshot.service": "3",
    }


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_each_command_line_is_accepted_by_vaultfs(path: Path) -> None:
    """Every vaultfs command a unit runs parses (its --help exits 0): a renamed option or
    subcommand fails here, not in a NAS's journal at 2 a.m."""
    for argv in exec_lines(path):
        proc = subprocess.run(
            [sys.executable, "-m", "vaultfs.cli", *argv[1:], "--help"],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert proc.returncode == 0, f"{argv}: {proc.stderr}"
        for option in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
            assert option in proc.stdout, f"{argv}: {option} not in `vaultfs {argv[1]} --help`"


def test_the_docs_match_the_units() -> None:
    schedules = (REPO / "docs" / "schedules.md").read_text()
    mount = (REPO / "docs" / "mount.md").read_text()
    for path in UNITS:
        if path.suffix == ".timer":
            assert path.name in schedules, path.name
    assert "vaultfs-failure@.service" in schedules and "SuccessExitStatus=3" in schedules
    assert f"exit {EXIT_BITROT}, which fails the unit" in " ".join(schedules.split())  # slice rot
    assert "journalctl -u vaultfs-snapshot" in schedules  # where the output goes
    for text in (schedules, mount):
        assert "/usr/local/bin/vaultfs" in text  # the symlink for a virtualenv install
        assert "ExecStart=/usr/local/bin" not in text
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed by test_systemd_analyze_verify"
