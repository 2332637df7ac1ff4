"""States you can see, restores you asked for told (issue 19, points 3 and 4).

Real kernel mounts on moto's S3, with restores held pending through moto's state manager
(`hold_next_restore`, `keep_holding` from test_mount_restore): ``getfattr`` shows
``user.xdg.comment``/``user.xdg.tags`` in each state, the ``on_restore_requested`` and
``on_restore_ready`` hooks receive the band, the files and the asking process, the
status outputs group restores by the files that asked, and refused opens are logged
once per (process, band) per minute — the minute passing on the mount's test clock
(``VAULTFS_TESTPOINTS=mount-clock=FILE``), not by sleeping. The contrib notifiers run
against stub ``notify-send`` and ``sendmail`` programs on PATH.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.moto_server import S3Bucket
from tests.mounts import as_nobody, mount_log, mounted, wait_for
from tests.test_archive import release_restores
from tests.test_mount_restore import (  # noqa: F401 - `cold` is a fixture
    Cold,
    cold,
    hold_next_restore,
    keep_holding,
    open_errno,
    poll_now,
)
from tests.trees import write
from tests.vaultenv import REPO, VaultEnv

CONTRIB = REPO / "contrib"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def xattrs(path: Path) -> dict[str, str]:
    """Every extended attribute `getfattr -d -m -` shows (values base64 on the wire: the
    comment holds an em dash, which getfattr's text form would escape)."""
    out = subprocess.run(
        ["getfattr", "-d", "-m", "-", "-e", "base64", "--absolute-names", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            found[name] = base64.b64decode(value.removeprefix("0s")).decode()
    return found


def bands_of(mnt: Path) -> dict[str, list[Path]]:
    """band id → the non-empty files of photos/v1 in it, bands in id order."""
    out: dict[str, list[Path]] = {}
    for path in sorted((mnt / "photos" / "v1").iterdir()):
        if path.stat().st_size:
            out.setdefault(os.getxattr(path, "user.vaultfs.band").decode(), []).append(path)
    return dict(sorted(out.items()))


@pytest.fixture
def world_env(s3_bucket: S3Bucket, world_dir: Path) -> Iterator[VaultEnv]:
    """A cold collection of two archived bands (and an empty file) and a warm collection,
    in a directory uid 65534 can reach (the mount runs with --allow-other)."""
    env = VaultEnv.on_s3(world_dir, s3_bucket, band_size="2MiB")
    docs = env.add_collection("docs", tier="warm")
    photos = env.add_collection("photos", tier="cold")
    # No preview ranges (written into [collections.photos], the last table): opening an
    # archived file is what decides here (files with previews: test_mount_previews.py).
    env.extra_config = "preview_head = 0\n"
    env.write_config()
    for i in range(4):
        write(photos / f"img{i}.raw", os.urandom(1_000_000))
    write(photos / "zero", b"")
    write(docs / "note.txt", b"in S3 Standard\n")
    env.run("init")
    env.run("snapshot")
    try:
        yield env
    finally:
        release_restores(s3_bucket)


class Hooks:
    """A hook program that appends its arguments and VAULTFS_* environment to a file."""

    def __init__(self, directory: Path) -> None:
        self.out = directory / "hook.jsonl"
        program = directory / "hook.py"
        program.write_text(
            "import json, os, sys\n"
            f"with open({str(self.out)!r}, 'a') as f:\n"
            "    vaultfs = {k: v for k, v in os.environ.items() if k.startswith('VAULTFS_')}\n"
            "    f.write(json.dumps({'argv': sys.argv[1:], 'env': vaultfs}) + '\\n')\n"
        )
        self.command = f"{sys.executable} {program} 'two words'"

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.out.read_text().splitlines()] if self.out.exists() else []


def assert_archived_states(mnt: Path, archived: Path) -> None:
    """An archived file says so and what copying does; files without an archived band say nothing."""
    found = xattrs(archived)
    assert found["user.xdg.tags"] == "archived"
    assert found["user.xdg.comment"] == (
        "archived in Deep Archive — copying requests a restore, ready within 48 h (Bulk)"
    )
    assert found["user.vaultfs.state"] == "archived"
    note = xattrs(mnt / "docs" / "v1" / "note.txt")  # S3 Standard: nothing to say
    assert note["user.vaultfs.state"] == "available" and not any(k.startswith("user.xdg") for k in note)
    zero = mnt / "photos" / "v1" / "zero"
    assert not any(k.startswith("user.xdg") for k in xattrs(zero))  # no band at all
    missing = subprocess.run(["getfattr", "-n", "user.xdg.tags", str(zero)], capture_output=True)
    assert missing.returncode == 1 and b"No such attribute" in missing.stderr


def assert_askers_shown(env: VaultEnv, mnt: Path, band: str, files: list[Path], cp_pid: int) -> None:
    """/.vaultfs/status, restores.json and `vaultfs restore status` list the files that asked."""
    first, second = (re.escape(f"photos@v1/{f.name}") for f in files)
    status = (mnt / ".vaultfs" / "status").read_text()
    block = re.search(
        rf"  {band}: restoring \(Bulk, ready by [^)]*\)\n    asked for by:\n((?:      .*\n)+)", status
    )
    assert block, status
    askers = block.group(1).splitlines()
    assert len(askers) == 2
    assert re.fullmatch(rf"      {first} \(cp, pid {cp_pid}, uid 65534, at {ISO.pattern}\)", askers[0])
    mine = re.fullmatch(rf"      {second} \(([^,]+), pid {os.getpid()}, uid 0, at .*\)", askers[1])
    assert mine, askers[1]
    doc = env.json("restore", "status")  # another process, the same record
    (band_doc,) = doc["bands"]
    assert [(x["file"], x["uid"], x["comm"]) for x in band_doc["asked_by"]] == [
        (f"photos@v1/{files[0].name}", 65534, "cp"),
        (f"photos@v1/{files[1].name}", 0, mine.group(1)),
    ]
    human = env.run("restore", "status").stdout
    assert f"asked for through the mount:\n  {band}: restoring (Bulk" in human
    assert f"      photos@v1/{files[0].name} (cp, pid {cp_pid}, uid 65534, at " in human
    restores = json.loads((mnt / ".vaultfs" / "restores.json").read_text())
    assert restores["bands"][0]["asked_by"] == band_doc["asked_by"]


def test_states_hooks_and_askers(world_env: VaultEnv, world_dir: Path) -> None:
    env, bucket, hooks = world_env, world_env.bucket, Hooks(world_dir)
    command = json.dumps(hooks.command)
    env.extra_config = (
        "[mount]\npoll_interval = 3600\ncache_size = 3000000\n"
        f"on_restore_requested = {command}\non_restore_ready = {command}\n"
    )
    env.write_config()
    with mounted(env, world_dir / "mnt", "--allow-other") as mnt:
        (a, files_a), (b, files_b) = bands_of(mnt).items()
        assert_archived_states(mnt, files_a[0])

        # A person (uid 65534) copies a file out: the restore is requested, and told.
        hold_next_restore(bucket)
        copy = as_nobody("cp", str(files_a[0]), "/dev/null")
        assert copy.returncode == 1 and b"No data available" in copy.stderr
        keep_holding(bucket, a)
        wait_for(lambda: len(hooks.calls()) == 1, "on_restore_requested")
        (requested,) = hooks.calls()
        assert requested["argv"] == ["two words", a]  # no shell; the band id last
        told = requested["env"]
        assert told["VAULTFS_EVENT"] == "requested" and told["VAULTFS_BAND"] == a
        fa0, fa1, fb0 = (f"photos@v1/{p.name}" for p in (*files_a, files_b[0]))
        assert told["VAULTFS_FILES"] == fa0
        assert (told["VAULTFS_UID"], told["VAULTFS_UIDS"], told["VAULTFS_COMM"]) == ("65534", "65534", "cp")
        assert told["VAULTFS_TIER"] == "Bulk" and ISO.fullmatch(told["VAULTFS_READY_BY"])
        cp_pid = int(told["VAULTFS_PID"])
        log = mount_log(env).read_text()
        assert f"restore of band {a} on open: requested (Bulk, 7 days, " in log
        assert f"asked by process {cp_pid} (cp, /usr/bin/cp, uid 65534) opening {fa0}" in log

        # While it restores, a thumbnailer and then root open the other file of the band:
        # root is an asker too (once).
        restoring = xattrs(files_a[1])
        assert restoring["user.xdg.tags"] == "restoring"
        assert re.fullmatch(
            r"restoring from Deep Archive, ready by \d{4}-\d\d-\d\d \d\d:\d\d UTC — copying fails until then",
            restoring["user.xdg.comment"],
        )
        thumbnailer = world_dir / "gdk-pixbuf-thumbnailer"  # not an asker: no_restore_processes
        shutil.copy("/bin/cat", thumbnailer)
        assert subprocess.run([str(thumbnailer), str(files_a[1])], capture_output=True).returncode == 1
        assert open_errno(files_a[1]) == errno.ENODATA
        assert open_errno(files_a[1]) == errno.ENODATA
        assert_askers_shown(env, mnt, a, files_a, cp_pid)

        assert as_nobody("cat", str(files_b[0])).returncode == 1  # band b: restore requested
        wait_for(lambda: len(hooks.calls()) == 2, "on_restore_requested for band b")
        release_restores(bucket)
        poll_now(mnt)  # both ready; one band fits in the cache, the other stays restored on S3
        wait_for(lambda: len(hooks.calls()) == 4, "on_restore_ready for both bands")
        ready = {c["argv"][-1]: c["env"] for c in hooks.calls()[2:]}
        assert ready[a]["VAULTFS_EVENT"] == "ready"
        assert ready[a]["VAULTFS_FILES"] == f"{fa0}\n{fa1}"
        assert ready[a]["VAULTFS_UIDS"] == "65534 0" and ready[a]["VAULTFS_UID"] == "65534"
        assert ready[b]["VAULTFS_FILES"] == fb0
        tags = {xattrs(files[0])["user.xdg.tags"]: files for files in (files_a, files_b)}
        assert set(tags) == {"cached", "restored"}
        assert (
            xattrs(tags["cached"][0])["user.xdg.comment"]
            == "restored from Deep Archive, kept on this NAS (cached)"
        )
        assert re.fullmatch(
            r"restored from Deep Archive, readable until \d{4}-\d\d-\d\d \d\d:\d\d UTC",
            xattrs(tags["restored"][1])["user.xdg.comment"],
        )
    assert "Traceback" not in mount_log(env).read_text()


def test_refused_opens_are_logged_once_a_minute_per_process_and_band(cold: Cold, tmp_path: Path) -> None:  # noqa: F811
    clock = tmp_path / "clock"
    clock.write_text("2026-12-01T10:00:00Z")
    tumblerd = tmp_path / "tumblerd"  # a thumbnailer: its opens never request a restore
    tumblerd.write_bytes(Path("/bin/dash").read_bytes())
    tumblerd.chmod(0o755)
    loop = (  # open FILE N times (in this one process), then say ok
        'while read f n; do i=0; while [ $i -lt $n ]; do { true < "$f"; } 2>/dev/null; i=$((i+1)); done; '
        "echo ok; done"
    )
    with mounted(cold.env, tmp_path / "mnt", VAULTFS_TESTPOINTS=f"mount-clock={clock}") as mnt:
        files = sorted((mnt / "photos" / "v1").iterdir())
        bands = [os.getxattr(p, "user.vaultfs.band").decode() for p in files]
        a, b = bands[0], bands[-1]
        thumb = subprocess.Popen(
            [str(tumblerd), "-c", loop], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        other = subprocess.run([str(tumblerd), "-c", f'true < "{files[0]}"'], capture_output=True)
        assert other.returncode != 0

        def opens(path: Path, n: int) -> None:
            assert thumb.stdin is not None and thumb.stdout is not None
            thumb.stdin.write(f"{path} {n}\n")
            thumb.stdin.flush()
            assert thumb.stdout.readline() == "ok\n"

        def lines(pattern: str) -> list[str]:
            return [x for x in mount_log(cold.env).read_text().splitlines() if re.search(pattern, x)]

        pid = thumb.pid
        try:
            opens(files[0], 30)
            opens(files[-1], 5)
            clock.write_text("2026-12-01T10:00:30Z")
            opens(files[0], 10)
            assert len(lines(rf"no restore of band {a} requested: .* \(process {pid} \(tumblerd")) == 1
            assert len(lines(rf"no restore of band {b} requested: .* \(process {pid} \(tumblerd")) == 1
            assert len(lines(r"no restore of band .* \(process \d+ \(tumblerd")) == 3  # + the other process
            clock.write_text("2026-12-01T10:01:01Z")
            opens(files[0], 1)
            again = lines(rf"no restore of band {a} requested: .* \(process {pid} ")
            assert len(again) == 2
            assert again[1].endswith(
                f"(and 39 more refused open(s) by process {pid} in band {a} since 2026-12-01T10:00:00Z)"
            )
            assert lines(
                rf"process {pid} was refused 4 more open\(s\) of files in band {b} since 2026-12-01T10:00:00Z"
            )
            opens(files[0], 3)  # counted, written at unmount
        finally:
            assert thumb.stdin is not None
            thumb.stdin.close()
            thumb.wait()
    assert lines(
        rf"process {pid} was refused 3 more open\(s\) of files in band {a} since 2026-12-01T10:01:01Z"
    )
    assert len(lines(rf"band {a}.*process {pid}|process {pid}.*band {a}")) == 3
    assert cold.proxy.restores == []


# ---- the contrib notifiers, with stub programs on PATH ------------------------------------------


def stub(bin_dir: Path, name: str, out: Path) -> None:
    """A program that records who ran it, its arguments, its environment and its input."""
    path = bin_dir / name
    path.write_text(
        "#!/bin/sh\n"
        f'{{ echo "uid=$(id -u)"; echo "bus=${{DBUS_SESSION_BUS_ADDRESS:-}}"; echo "home=${{HOME:-}}"; '
        f'for a in "$@"; do echo "arg=$a"; done; cat; }} >> {out}\n'
    )
    path.chmod(0o755)


def test_desktop_and_mail_notifiers(world_dir: Path) -> None:
    for script in ("vaultfs-notify-desktop", "vaultfs-notify-mail"):
        subprocess.run(["sh", "-n", str(CONTRIB / script)], check=True)
    bin_dir, out_dir, run_user = world_dir / "bin", world_dir / "out", world_dir / "run"
    bin_dir.mkdir()
    out_dir.mkdir(mode=0o777)
    out_dir.chmod(0o777)
    out = out_dir / "calls"
    stub(bin_dir, "notify-send", out)
    stub(bin_dir, "sendmail", out)
    buses = []
    for uid in (65534, 0):
        (run_user / str(uid)).mkdir(parents=True)
        bus = socket.socket(socket.AF_UNIX)
        bus.bind(str(run_user / str(uid) / "bus"))
        buses.append(bus)
    base = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": "/root",
        "VAULTFS_RUN_USER_DIR": str(run_user),
        "VAULTFS_BAND": "b-000001",
        "VAULTFS_FILES": "photos@v1/a <b>.jpg\nphotos@v1/c\\nd.jpg",
        "VAULTFS_READY_BY": "2026-12-03T10:00:00Z",
        "VAULTFS_TIER": "Bulk",
        "VAULTFS_PID": "4242",
        "VAULTFS_UID": "65534",
        "VAULTFS_COMM": "cp",
    }
    try:
        done = subprocess.run(
            [str(CONTRIB / "vaultfs-notify-desktop"), "b-000001"],
            env={**base, "VAULTFS_EVENT": "requested", "VAULTFS_UIDS": "65534 4321"},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 1  # uid 4321 has no session
        assert f"uid 4321 has no session bus ({run_user}/4321/bus): not told" in done.stderr
        assert out.read_text().splitlines() == [
            "uid=65534",  # as the user who asked, on their bus, nothing of the caller's
            f"bus=unix:path={run_user}/65534/bus",
            "home=",
            "arg=--app-name=vaultfs",
            "arg=--icon=drive-harddisk",
            "arg=Restore requested from Deep Archive",
            "arg=photos@v1/a &lt;b&gt;.jpg and 1 more file(s): copying failed because it is archived; "
            "a restore has been requested. Copy it again after 2026-12-03T10:00:00Z (UTC).",
        ]
        out.unlink()
        done = subprocess.run(
            [str(CONTRIB / "vaultfs-notify-desktop"), "b-000001"],
            env={**base, "VAULTFS_EVENT": "ready", "VAULTFS_UIDS": "0"},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        calls = out.read_text().splitlines()
        assert calls[0] == "uid=0" and calls[-2:] == [
            "arg=Restore ready",
            "arg=photos@v1/a &lt;b&gt;.jpg and 1 more file(s) can be copied now "
            "(restored from Deep Archive, band b-000001).",
        ]
    finally:
        for bus in buses:
            bus.close()
    out.unlink()
    done = subprocess.run(
        [str(CONTRIB / "vaultfs-notify-mail"), "nas@example.net", "me@example.net", "b-000001"],
        env={**base, "VAULTFS_EVENT": "requested", "VAULTFS_UIDS": "65534"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    mail = out.read_text()
    assert "arg=-t\narg=-oi\nTo: nas@example.net, me@example.net\n" in mail
    assert "Subject: vaultfs: restore of band b-000001 requested, ready by 2026-12-03T10:00:00Z\n" in mail
    assert "by process 4242 (cp, uid 65534) opening:\n\nphotos@v1/a <b>.jpg\nphotos@v1/c\\nd.jpg\n" in mail
    out.unlink()
    done = subprocess.run(  # no address: the local account of each user who asked
        [str(CONTRIB / "vaultfs-notify-mail"), "b-000001"],
        env={**base, "VAULTFS_EVENT": "ready", "VAULTFS_UIDS": "65534"},
        capture_output=True,
        text=True,
    )
    assert (
        done.returncode == 0
        and "To: nobody\nSubject: vaultfs: restore of band b-000001 is ready\n" in out.read_text()
    )
