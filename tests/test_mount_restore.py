"""Deep Archive through the mount (issue 4 point 6): restore on open, guards, the watcher.

S3 is moto's HTTP server. The mount talks to it through `CountingProxy`, which
counts RestoreObject requests on the wire, so a duplicate request is caught
whatever the mount's own bookkeeping believes. Pending restores are held with
moto's state manager. The watcher polls only at mount start and on
SIGUSR1 (poll_interval is an hour here); `poll_now` waits until a poll that
started after its signal has finished, as /.vaultfs/status reports.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.moto_server import S3Bucket
from tests.mounts import mount_log, mount_pid, mounted, wait_for
from tests.test_archive import moto_api, release_restores
from tests.trees import write
from tests.vaultenv import VaultEnv
from vaultfs.catalog import Catalog
from vaultfs.model import BandId, BandInfo, RestoreInfo
from vaultfs.mount import restore_policy
from vaultfs.mount.view import state_text

FILES = 6  # 1 MB each, two to a band: three bands of ~2 MB, all archived
HOLD_FOREVER = 10**9
RESTORING = re.compile(r"restoring \(Bulk, ready by \d{4}-\d\d-\d\dT\d\d:\d\dZ\)")
# These files have no preview ranges, so opening one is what decides (files with previews:
# test_mount_previews.py). Written into [collections.photos], the config's last table.
NO_PREVIEWS = "preview_head = 0\n"
RESTORED = re.compile(r"restored until \d{4}-\d\d-\d\dT\d\d:\d\dZ")


# ---- a proxy that counts RestoreObject requests ------------------------------------------


class CountingProxy:
    """HTTP in front of moto; `restores` lists the key of every RestoreObject request."""

    HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"})

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        self.restores: list[str] = []
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                url = urlsplit(self.path)
                if self.command == "POST" and "restore" in parse_qs(url.query, keep_blank_values=True):
                    with lock:
                        proxy.restores.append(url.path.split("/", 2)[2])
                conn = http.client.HTTPConnection(host, port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in CountingProxy.HOP:
                        self.send_header(k, v)
                size = resp.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests_for(self, band: str) -> int:
        return sum(1 for k in self.restores if k == f"vault/bands/{band}.tar.zst")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- the vault -----------------------------------------------------------------------------


@dataclass
class Cold:
    env: VaultEnv
    contents: dict[str, bytes]
    proxy: CountingProxy
    bucket: S3Bucket

    def configure(self, **mount: object) -> None:
        settings = {"poll_interval": 3600, **mount}
        lines = ["[mount]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        self.env.extra_config = NO_PREVIEWS + "\n".join(lines) + "\n"
        self.env.write_config()


@pytest.fixture
def cold(s3_bucket: S3Bucket, tmp_path: Path) -> Iterator[Cold]:
    env = VaultEnv.on_s3(tmp_path, s3_bucket, band_size="2MiB")
    src = env.add_collection("photos", tier="cold")
    env.extra_config = NO_PREVIEWS
    env.write_config()
    contents = {f"img{i}.raw": os.urandom(1_000_000) for i in range(FILES)}
    for name, data in contents.items():
        write(src / name, data)
    env.run("init")
    assert env.json("snapshot")["collections"][0]["archived"] == 3
    proxy = CountingProxy(s3_bucket.endpoint_url)
    env.s3_endpoint = proxy.url  # from here on, every store call goes through the proxy
    cold = Cold(env, contents, proxy, s3_bucket)
    cold.configure()
    try:
        yield cold
    finally:
        release_restores(s3_bucket)
        proxy.close()


def by_band(mnt: Path) -> dict[str, list[Path]]:
    """band id → the files of v1 in it, bands in id order."""
    out: dict[str, list[Path]] = {}
    for path in sorted((mnt / "photos" / "v1").iterdir()):
        out.setdefault(os.getxattr(path, "user.vaultfs.band").decode(), []).append(path)
    return dict(sorted(out.items()))


def state(path: Path) -> str:
    return os.getxattr(path, "user.vaultfs.state").decode()


def open_errno(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return e.errno
    return None


def watcher(mnt: Path) -> tuple[int, int]:
    """(SIGUSR1 received, answered) from /.vaultfs/status."""
    text = (mnt / ".vaultfs" / "status").read_text()
    m = re.search(r"SIGUSR1: (\d+) received, (\d+) answered", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def poll_now(mnt: Path) -> None:
    """SIGUSR1, then wait until a poll that started after it has finished."""
    received, _ = watcher(mnt)
    os.kill(mount_pid(mnt), signal.SIGUSR1)
    wait_for(lambda: watcher(mnt)[1] > received, "the restore watcher's poll")


def hold_next_restore(bucket: S3Bucket) -> None:
    """The next restore stays pending: one state step for the request (see start_held_restores)."""
    moto_api(
        bucket,
        "set-transition",
        {"model_name": "s3::keyrestore", "transition": {"progression": "manual", "times": 1}},
    )


def keep_holding(bucket: S3Bucket, band: str) -> None:
    head = bucket.client().head_object(Bucket=bucket.name, Key=f"vault/bands/{band}.tar.zst")
    assert head["Restore"] == 'ongoing-request="true"'
    moto_api(
        bucket,
        "set-transition",
        {"model_name": "s3::keyrestore", "transition": {"progression": "manual", "times": HOLD_FOREVER}},
    )


def expire_restored_copy(bucket: S3Bucket, band: str) -> None:
    """What S3 does when restore_days are over: the x-amz-restore header goes away."""
    client, key = bucket.client(), f"vault/bands/{band}.tar.zst"
    client.copy_object(
        Bucket=bucket.name,
        Key=key,
        CopySource={"Bucket": bucket.name, "Key": key},
        StorageClass="DEEP_ARCHIVE",
        MetadataDirective="REPLACE",
        Metadata={"expired": "yes"},
    )
    assert "Restore" not in client.head_object(Bucket=bucket.name, Key=key)


def run_as(program: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(program), *args], capture_output=True, timeout=60)


# ---- through a real mount -------------------------------------------------------------------


def test_open_requests_exactly_one_restore_and_fails_at_once(cold: Cold, tmp_path: Path) -> None:
    with mounted(cold.env, tmp_path / "mnt") as mnt:
        bands = by_band(mnt)
        assert len(bands) == 3 and all(len(files) == 2 for files in bands.values())
        a, b, _ = bands
        first = bands[a][0]
        getfattr = subprocess.run(
            ["getfattr", "-n", "user.vaultfs.state", "--only-values", str(first)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert getfattr.stdout == "archived"
        assert {state(p) for files in bands.values() for p in files} == {"archived"}

        started = time.monotonic()
        assert open_errno(first) == errno.ENODATA
        assert time.monotonic() - started < 5  # at once: one RestoreObject, no waiting for it
        assert cold.proxy.restores == [f"vault/bands/{a}.tar.zst"]
        assert RESTORING.fullmatch(state(first)) and RESTORING.fullmatch(state(bands[a][1]))
        cat = subprocess.run(["cat", str(bands[a][1])], capture_output=True)
        assert cat.returncode == 1 and b"No data available" in cat.stderr
        assert len(cold.proxy.restores) == 1  # restoring: later opens ask for nothing

        doc = json.loads((mnt / ".vaultfs" / "restores.json").read_text())
        assert [(x["band"], x["state"], x["tier"]) for x in doc["bands"]] == [(a, "restoring", "Bulk")]
        assert doc["bytes_pending"] == doc["bands"][0]["size"] > 1024 * 1024
        status = (mnt / ".vaultfs" / "status").read_text()
        assert "restores in flight: 1 band(s)" in status and f"{a}: restoring (Bulk" in status

        # 20 processes open the files of one archived band at the same moment.
        procs = [
            subprocess.Popen(
                ["sh", "-c", 'read x; exec cat "$0"', str(bands[b][i % 2])],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(20)
        ]
        for proc in procs:  # each waits for its line: the 20 opens start together
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 1 and out == b"" and b"No data available" in err, err
        assert cold.proxy.requests_for(b) == 1
        assert len(cold.proxy.restores) == 2
    log = mount_log(cold.env).read_text()
    assert log.count(f"restore of band {b} on open: requested") == 1
    assert "Traceback" not in log


def test_thumbnailers_start_no_restore(cold: Cold, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    thumbnailer = bin_dir / "gdk-pixbuf-thumbnailer"
    shutil.copy("/bin/cat", thumbnailer)
    kio = bin_dir / "kioslave5"  # Dolphin's worker: KIO copies run in it too
    shutil.copy("/bin/sh", kio)
    with mounted(cold.env, tmp_path / "mnt") as mnt:
        a, *_ = bands = by_band(mnt)
        target = str(bands[a][0])
        proc = run_as(thumbnailer, target)
        assert proc.returncode == 1 and b"No data available" in proc.stderr
        proc = run_as(kio, "-c", ': < "$1"', "/usr/lib/kf5/kio/thumbnail.so", target)
        assert proc.returncode != 0 and b"No data available" in proc.stderr  # kioslave5:thumbnail.so
        assert cold.proxy.restores == []
        assert state(bands[a][0]) == "archived"
        copy = run_as(kio, "-c", ': < "$1"', "/usr/lib/kf5/kio/file.so", target)  # a user's copy
        assert copy.returncode != 0 and b"No data available" in copy.stderr
        assert cold.proxy.restores == [f"vault/bands/{a}.tar.zst"]
    log = mount_log(cold.env).read_text()
    assert "matching no_restore_processes 'gdk-pixbuf-thumbnailer'" in log
    assert "matching no_restore_processes 'kioslave5:thumbnail.so'" in log


def test_budget_and_auto_restore_guards_survive_a_remount(cold: Cold, tmp_path: Path) -> None:
    cold.configure(restore_budget_per_day=3_000_000)  # one ~2 MB band a day
    mnt_dir = tmp_path / "mnt"
    with mounted(cold.env, mnt_dir) as mnt:
        a, b, c = bands = by_band(mnt)
        assert open_errno(bands[a][0]) == errno.ENODATA
        assert open_errno(bands[b][0]) == errno.ENODATA
        assert cold.proxy.restores == [f"vault/bands/{a}.tar.zst"]
        assert state(bands[b][0]) == "archived"
        assert re.search(
            r"today's budget \d+ of 3000000 bytes used", (mnt / ".vaultfs" / "status").read_text()
        )
    with mounted(cold.env, mnt_dir) as mnt:  # the day's spending is kept
        assert open_errno(bands[c][0]) == errno.ENODATA
        assert len(cold.proxy.restores) == 1
    cold.configure(auto_restore=False)
    with mounted(cold.env, mnt_dir) as mnt:
        assert open_errno(bands[c][0]) == errno.ENODATA
        assert len(cold.proxy.restores) == 1
    cold.configure()  # the default budget: the same open now asks
    with mounted(cold.env, mnt_dir) as mnt:
        assert open_errno(bands[c][0]) == errno.ENODATA
        assert cold.proxy.restores[1:] == [f"vault/bands/{c}.tar.zst"]
    log = mount_log(cold.env).read_text()
    assert log.count("today's restore budget is spent") == 2
    assert "[mount].auto_restore is off" in log


def test_pending_restore_becomes_readable(cold: Cold, tmp_path: Path) -> None:
    cold.configure(fetch_restored=False)
    with mounted(cold.env, tmp_path / "mnt") as mnt:
        a, *_ = bands = by_band(mnt)
        hold_next_restore(cold.bucket)
        assert open_errno(bands[a][0]) == errno.ENODATA
        keep_holding(cold.bucket, a)
        poll_now(mnt)
        assert RESTORING.fullmatch(state(bands[a][0]))
        assert open_errno(bands[a][1]) == errno.ENODATA
        release_restores(cold.bucket)
        poll_now(mnt)
        assert RESTORED.fullmatch(state(bands[a][0])), state(bands[a][0])
        for path in bands[a]:  # ranged GETs on the restored copy
            assert path.read_bytes() == cold.contents[path.name]
        doc = json.loads((mnt / ".vaultfs" / "restores.json").read_text())
        (entry,) = doc["bands"]
        assert entry["state"] == "restored" and entry["expires_at"] and not entry["cached"]
        assert cold.proxy.restores == [f"vault/bands/{a}.tar.zst"]
        assert not (cold.env.state_dir / "cache" / f"{a}.tar.zst").exists()


def test_watcher_fetches_into_a_bounded_cache_and_expiry(cold: Cold, tmp_path: Path) -> None:
    hook_out = tmp_path / "hook.jsonl"
    hook = tmp_path / "hook.py"
    hook.write_text(
        "import json, sys\n"
        f"with open({str(hook_out)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    cold.configure(
        fetch_restored=True, cache_size=3_000_000, on_restore_ready=f"{sys.executable} {hook} '$HOME;x'"
    )

    def hook_calls() -> list[list[str]]:
        return [json.loads(x) for x in hook_out.read_text().splitlines()] if hook_out.exists() else []

    cache = cold.env.state_dir / "cache"
    with mounted(cold.env, tmp_path / "mnt") as mnt:
        a, b, _ = bands = by_band(mnt)
        assert open_errno(bands[a][0]) == errno.ENODATA  # moto restores at once
        poll_now(mnt)
        assert state(bands[a][0]) == "cached" and (cache / f"{a}.tar.zst").exists()
        assert bands[a][0].read_bytes() == cold.contents[bands[a][0].name]
        wait_for(lambda: len(hook_calls()) == 1, "on_restore_ready for the first band")
        assert hook_calls() == [["$HOME;x", a]]  # no shell: the argument arrives verbatim

        with open(bands[a][1], "rb") as reading:  # band a is being read: it stays
            assert reading.read(10) == cold.contents[bands[a][1].name][:10]
            assert open_errno(bands[b][0]) == errno.ENODATA
            poll_now(mnt)
            assert RESTORED.fullmatch(state(bands[b][0])) and state(bands[a][0]) == "cached"
            assert bands[b][1].read_bytes() == cold.contents[bands[b][1].name]  # from S3
            assert reading.read() == cold.contents[bands[a][1].name][10:]
        wait_for(lambda: len(hook_calls()) == 2, "on_restore_ready for the second band")
        assert hook_calls()[1] == ["$HOME;x", b]
        poll_now(mnt)  # now a can go: b takes its place
        assert state(bands[b][0]) == "cached" and RESTORED.fullmatch(state(bands[a][0]))
        assert sorted(p.name for p in cache.iterdir()) == [f"{b}.tar.zst"]
        assert bands[b][0].read_bytes() == cold.contents[bands[b][0].name]  # the local copy

        for band in (a, b):
            expire_restored_copy(cold.bucket, band)
        poll_now(mnt)
        assert state(bands[a][0]) == "archived"  # back to Deep Archive
        assert state(bands[b][0]) == "cached"  # the NAS still has it
        assert bands[b][1].read_bytes() == cold.contents[bands[b][1].name]
        assert open_errno(bands[a][0]) == errno.ENODATA
        assert cold.proxy.restores == [f"vault/bands/{x}.tar.zst" for x in (a, b, a)]

        # The NAS's copy of b is deleted behind the mount's back (to free space). Its
        # restored copy on S3 has expired too: the read finds out and answers ENODATA,
        # not EIO (which would mean damage); b is archived again, and the next open
        # restores it.
        (cache / f"{b}.tar.zst").unlink()
        with open(bands[b][1], "rb") as f:  # it was read whole: the kernel kept its verified
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # pages; drop them
        assert open_errno(bands[b][1]) == errno.ENODATA
        assert state(bands[b][0]) == "archived"
        assert cold.proxy.restores == [f"vault/bands/{x}.tar.zst" for x in (a, b, a)]
        assert open_errno(bands[b][1]) == errno.ENODATA
        assert cold.proxy.restores == [f"vault/bands/{x}.tar.zst" for x in (a, b, a, b)]
    assert len(hook_calls()) == 2


# ---- without a kernel ------------------------------------------------------------------------


def test_process_rules(tmp_path: Path) -> None:
    thumbs = tmp_path / "thumbnailers"
    thumbs.mkdir()
    (thumbs / "my.thumbnailer").write_text(
        "[Thumbnailer Entry]\nTryExec=/usr/bin/my-thumbnailer\n"
        "Exec=/usr/bin/my-thumbnailer -s %s %u %o\nMimeType=image/png;\n"
    )
    (thumbs / "fm.thumbnailer").write_text("[Thumbnailer Entry]\nExec=nautilus --thumb %u\n")
    rules = restore_policy.parse_rules(
        ["thunar", "kioslave5", "tumblerd", "kioslave5:thumbnail.so", "baloo_file_extractor"], thumbs
    )
    assert [str(r) for r in rules] == [
        "tumblerd",
        "kioslave5:thumbnail.so",
        "baloo_file_extractor",
        "my-thumbnailer",
    ]
    matcher = restore_policy.ProcessMatcher(rules)

    def spawn(name: str, how: str) -> subprocess.Popen[bytes]:
        path = tmp_path / name
        if how == "copy":
            shutil.copy("/bin/sleep", path)
        else:
            path.symlink_to("/bin/sleep")  # comm is the link's name, exe is sleep
        return started(subprocess.Popen([str(path), "30"]))

    def started(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        comm = Path("/proc") / str(proc.pid) / "comm"
        wait_for(lambda: comm.read_text() != own_comm, "the child to exec")
        return proc

    own_comm = (Path("/proc") / str(os.getpid()) / "comm").read_text()
    procs = {
        "my-thumbnailer": spawn("my-thumbnailer", "copy"),
        "baloo": spawn("baloo_file_extractor", "link"),  # comm: "baloo_file_extr" (15)
        "tumblerd": spawn("tumblerd", "copy"),
        "other": spawn("not-a-thumbnailer", "copy"),
        "thunar": spawn("thunar", "copy"),
    }
    try:
        found = {k: matcher.match(p.pid) for k, p in procs.items()}
        assert {k: str(v) if v else None for k, v in found.items()} == {
            "my-thumbnailer": "my-thumbnailer",
            "baloo": "baloo_file_extractor",
            "tumblerd": "tumblerd",
            "other": None,
            "thunar": None,
        }
        # The executable's basename matches on its own, whatever the comm says.
        (tmp_path / "renamed").symlink_to(tmp_path / "tumblerd")
        renamed = procs["renamed"] = started(subprocess.Popen([str(tmp_path / "renamed"), "30"]))
        assert (Path("/proc") / str(renamed.pid) / "comm").read_text() == "renamed\n"
        assert str(matcher.match(renamed.pid)) == "tumblerd"
        assert matcher.match(0) is None and matcher.match(2**22 + 12345) is None
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_restore_budget_record(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.lmdb")
    try:
        with catalog.writer() as w:
            assert w.charge_restore_budget("2026-11-26", 600, 1000)
            assert not w.charge_restore_budget("2026-11-26", 500, 1000)
            assert w.charge_restore_budget("2026-11-26", 400, 1000)
        assert catalog.restore_budget_spent("2026-11-26") == 1000
        assert catalog.restore_budget_spent("2026-11-27") == 0
        with catalog.writer() as w:
            assert w.charge_restore_budget("2026-11-26", -400, 1000)  # a refund
            assert w.charge_restore_budget("2026-11-27", 900, 1000)  # a new day starts at 0
        assert catalog.restore_budget_spent("2026-11-27") == 900
        assert catalog.restore_budget_spent("2026-11-26") == 0
    finally:
        catalog.close()


def test_state_text() -> None:
    base = BandInfo(BandId("b"), "standard", 10, b"", 10, ())
    when = 1_795_860_000 * 10**9  # 2026-11-28T10:00:00Z
    r = RestoreInfo("Bulk", when - 48 * 3600 * 10**9, when, 7)
    assert state_text(base) == "available"
    assert state_text(BandInfo(BandId("b"), "archived", 10, b"", 10, ())) == "archived"
    restoring = BandInfo(BandId("b"), "restoring", 10, b"", 10, (), restore=r)
    assert state_text(restoring) == "restoring (Bulk, ready by 2026-11-28T10:00Z)"
    restored = BandInfo(
        BandId("b"),
        "restored",
        10,
        b"",
        10,
        (),
        restore=RestoreInfo("Bulk", 0, 0, 7, ready_ns=1, expires_ns=when),
    )
    assert state_text(restored) == "restored until 2026-11-28T10:00Z"
    assert state_text(BandInfo(BandId("b"), "cached", 10, b"", 10, (), cached=True)) == "cached"
