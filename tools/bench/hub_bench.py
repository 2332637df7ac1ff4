#!/usr/bin/env python3
"""The hub over SSH (issue 14) against a local vaultfs snapshot and `borg serve`, side by side.

    tools/bench/hub_bench.py --data DIR --work WORKDIR [--only local,hub,hub2,borg]
        [--rounds N] [--json out.json] [--vaultfs PATH] [--data-b DIR2]

One real sshd runs for the whole benchmark, on 127.0.0.1, as a non-daemon child of this
script, with its own config, host key and authorized_keys under WORKDIR/sshd (the way
tests/sshd.py starts one; `PermitRootLogin forced-commands-only`, as docs/hub.md sets up
a hub). Its authorized_keys holds, per client key, the line `vaultfs clients add` prints
(a forced ``vaultfs serve --stdio --client NAME`` for a hub whose vault is a ``file://``
store under WORKDIR), and a line forcing ``borg serve --restrict-to-path`` for borg's key.

The benchmark runs N rounds (default 3); each round runs every selected run in the fixed
order local, hub, hub2, borg (interleaved: slow drift of the machine hits all alike), each
into a fresh repository, with the page cache warmed by reading the tree through tar first
and os.sync() before every step (untimed):

* ``local``: `vaultfs snapshot` into a local ``file://`` store (run.py's settings): first
  snapshot, then one with nothing changed.
* ``hub``: a client config (``[hub] url``, ``ssh_command``) snapshots DIR into the hub over
  loopback SSH: first and no-change snapshot; the bytes the client sent on the wire; the
  hub's peak RSS (its ``vaultfs serve`` process).
* ``hub2``: two client configs snapshot DIR and a copy of it (WORKDIR/copy-b, or
  ``--data-b``) at the same time into one hub: first snapshots together, then no-change
  snapshots together; the hub's peak RSS is the largest sum of the RSS of its ``serve``
  processes seen at once. An exact copy has the very listings of DIR: whichever client
  takes the vault lock second finds its root listing on the hub and sends nothing else;
  ``--data-b`` (e.g. a dataset made with another ``--seed``) makes both clients send theirs.
* ``borg``: `borg create` to ``ssh://root@127.0.0.1:PORT/…`` served by ``borg serve`` on the
  same sshd, with run.py's borg settings (``init --encryption=none``, ``create
  --compression zstd,3``): first and no-change snapshot, bytes sent, serve's peak RSS.

Bytes on the wire: every ssh client runs with ``-o LogLevel=VERBOSE -E LOGFILE``, and OpenSSH
logs, as it closes, ``Transferred: sent N, received M bytes``: its own count of the SSH
packets it wrote to and read from the TCP connection (encrypted, key exchange and
authentication included; not counted: the ~40-byte version banners, each packet's MAC or
AEAD tag of 16 bytes, and TCP/IP headers). The client's own count of the protocol frames it
wrote (``bytes_sent`` of `vaultfs snapshot --json`) is shown beside it.

Peak RSS of the server side: each forced command runs under GNU time (``/usr/bin/time -a -o
FILE -f %M``), which gives each ``serve`` process's own peak exactly; meanwhile a thread polls
``/proc`` every 50 ms for the ``serve`` processes under sshd and keeps the largest sum of
their VmRSS seen at one poll (the hub's memory with two clients at once; a spike shorter
than 50 ms can be missed, shared library pages are counted once per process); hub2 also
shows an upper bound, the sum of the two serves' exact peaks. The clients' peak RSS comes
from GNU time too (run.py's `run_measured`).

Prints a Markdown table of medians (times, bytes, sizes; maxima for RSS) and the ratios
against issue 14's targets; --json also writes every round. A run that fails in a round is
shown as failed with the tail of its stderr, and the script exits non-zero. Standard
library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    GNU_TIME,
    MIB,
    Measured,
    command_output,
    data_and_work,
    dataset_stats,
    du_bytes,
    environment,
    max_of,
    median_of,
    min_of,
    run_measured,
    warm_page_cache,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it
READY_TIMEOUT = 30.0
RUNS = ("local", "hub", "hub2", "borg")
CLIENTS = ("client-a", "client-b")  # the hub's names for the two client machines
COLLECTION = "bench"
TRANSFERRED = re.compile(r"Transferred: sent (\d+), received (\d+) bytes")
WRAPPERS = {"time", "env", "sh", "bash", "dash", "sshd", "sshd-session"}  # not a serve process

# issue 14's targets: (label, key of ratios(), limit, unit)
TARGETS = (
    ("first snapshot, hub / borg over ssh", "first_vs_borg", 0.5, "×"),
    ("first snapshot, hub / local", "first_vs_local", 1.3, "×"),
    ("no-change snapshot, hub / borg over ssh", "nochange_vs_borg", 1 / 3, "×"),
    ("no-change snapshot, bytes sent client→hub (wire) / dataset", "nochange_sent_pct", 0.1, "%"),
    ("hub peak RSS, two clients at once (sum of serve processes), MiB", "hub2_rss_mib", 200.0, ""),
)


def toml_str(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML ones)."""
    return json.dumps(value)


# --------------------------------------------------------------------------- sshd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, comment: str) -> None:
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


class Sshd:
    """Our own sshd on 127.0.0.1 (a child of this script, like tests/sshd.py's): keys only,
    root only for forced commands, its log (-e, LogLevel VERBOSE) in DIR/sshd.log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.authorized_keys = root / "authorized_keys"
        self.known_hosts = root / "known_hosts"
        self.log = root / "sshd.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        _keygen(self.root / "host_key", "hub-bench-host")
        self.authorized_keys.write_text("")
        for _attempt in range(5):
            self.port = _free_port()
            if self._try_start():
                host_key = " ".join((self.root / "host_key.pub").read_text().split()[:2])
                self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_key}\n")
                return
            if "Address already in use" not in self.log.read_text(errors="replace"):
                raise SystemExit(f"sshd did not start; see {self.log}")
        raise SystemExit("sshd found no free port in 5 tries")

    def _try_start(self) -> bool:
        config = self.root / "sshd_config"
        self.log.write_text("")
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {self.root / 'host_key'}\n"
            f"PidFile none\nAuthorizedKeysFile {self.authorized_keys}\n"
            "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nPermitRootLogin forced-commands-only\nLogLevel VERBOSE\n"
        )
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, args=(self.process, ready), daemon=True)
        self._reader.start()
        ready.wait(READY_TIMEOUT)
        if self.process.poll() is None and ready.is_set():
            return True
        self.stop()
        return False

    def _drain(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        """Copy sshd's log (stderr) to the log file; `ready` once it listens or is gone."""
        assert process.stderr is not None
        with open(self.log, "ab") as out:
            for raw in process.stderr:
                out.write(raw)
                out.flush()
                if raw.startswith(b"Server listening on"):
                    ready.set()
        ready.set()

    def ssh_args(self, key: Path, log: Path) -> list[str]:
        """ssh with only our key and known_hosts, no prompts, no config files; its log (with
        the byte counts it prints at exit) appended to `log`. The port comes from the URL."""
        options = [
            "IdentitiesOnly=yes",
            f"UserKnownHostsFile={self.known_hosts}",
            "GlobalKnownHostsFile=/dev/null",
            "StrictHostKeyChecking=yes",
            "BatchMode=yes",
            "LogLevel=VERBOSE",
        ]
        return ["ssh", "-F", "none", "-i", str(key), *(w for o in options for w in ("-o", o)), "-E", str(log)]

    def stop(self) -> None:
        """Stop every session process still under sshd (a serve left by an interrupted run),
        then sshd itself."""
        if self.process is None:
            return
        for pid in reversed(descendants(self.process.pid)):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=30)
        self.process = None


# --------------------------------------------------------------------------- measuring


def descendants(pid: int) -> list[int]:
    """pid's descendants, parents before children (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(c) for c in f.read().split()]
                found += kids
                stack += kids
        except OSError:
            pass
    return found


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _is_serve(pid: int) -> bool:
    """A `vaultfs serve` or `borg serve` process, not a wrapper (sh, env, time) around one."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return comm not in WRAPPERS and b"serve" in args


class ServePoller(threading.Thread):
    """Every 50 ms: the serve processes under sshd, the sum of their VmRSS (the largest
    sum is kept) and each one's VmHWM (the largest is kept)."""

    def __init__(self, sshd_pid: int) -> None:
        super().__init__(daemon=True)
        self.sshd_pid = sshd_pid
        self.peak_sum_kib = 0
        self.peak_one_kib = 0
        self.most_at_once = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            serves = [p for p in descendants(self.sshd_pid) if _is_serve(p)]
            status = [_status(p) for p in serves]
            self.peak_sum_kib = max(self.peak_sum_kib, sum(s.get("VmRSS", 0) for s in status))
            self.peak_one_kib = max([self.peak_one_kib, *(s.get("VmHWM", 0) for s in status)])
            self.most_at_once = max(self.most_at_once, len(serves))
            self.done.wait(0.05)


@contextmanager
def polling(sshd: Sshd) -> Iterator[ServePoller]:
    assert sshd.process is not None
    poller = ServePoller(sshd.process.pid)
    poller.start()
    try:
        yield poller
    finally:
        poller.done.set()
        poller.join()


class Counter:
    """Lines a log file gains during a step: ssh's byte counts, GNU time's peak RSS lines."""

    def __init__(self, path: Path, pattern: re.Pattern[str]) -> None:
        self.path, self.pattern = path, pattern
        self.seen = len(self._all())

    def _all(self) -> list[re.Match[str]]:
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return []
        return [m for m in (self.pattern.search(line) for line in text.splitlines()) if m]

    def new(self) -> list[re.Match[str]]:
        return self._all()[self.seen :]


RSS_LINE = re.compile(r"^(\d+)$")  # GNU time -f %M (after "Command exited with ..." on failure)


def sent_bytes(counter: Counter) -> int | None:
    found = counter.new()
    return sum(int(m.group(1)) for m in found) if found else None


def rss_peaks_mib(counter: Counter) -> list[float]:
    return [int(m.group(1)) / 1024 for m in counter.new()]


# --------------------------------------------------------------------------- the runs


@dataclass
class Result:
    """One run (local, hub, hub2, borg) in one round."""

    run: str
    round: int
    status: str = "ok"  # ok | failed
    failed_step: str = ""
    error: str = ""
    first_s: float | None = None  # hub2: from the start of both clients to the end of both
    nochange_s: float | None = None
    first_sent: int | None = None  # client → server on the SSH connection(s)
    nochange_sent: int | None = None
    nochange_frames_sent: int | None = None  # vaultfs's own count of the frames it wrote
    client_rss_mib: float | None = None  # largest peak of a client command
    server_rss_mib: float | None = None  # largest peak of one serve process
    server_rss_sum_mib: float | None = None  # largest sum over serve processes at one poll
    server_rss_bound_mib: float | None = None  # hub2: the sum of the two serves' own peaks
    repo_bytes: int | None = None
    extra: dict[str, float] = field(default_factory=dict)  # hub2: each client's times
    steps: list[Measured] = field(default_factory=list)


@dataclass
class Setup:
    """Paths, commands and environments shared by the runs."""

    data: Path
    work: Path
    vaultfs: Path
    borg: str | None
    sshd: Sshd
    base_env: dict[str, str]
    data_b: Path | None = None  # client-b's tree in hub2; None: a copy of data

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """A throwaway HOME (and XDG dirs) per tool, so no run reads or writes the user's."""
        home.mkdir(parents=True, exist_ok=True)
        env = self.base_env | {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
        }
        env.pop("VAULTFS_CONFIG", None)
        return env | extra

    def vf(self, config: Path) -> list[str]:
        return [str(self.vaultfs), "--config", str(config)]

    @property
    def hub_config(self) -> Path:
        return self.work / "hub" / "vault.toml"

    def client_dir(self, name: str) -> Path:
        return self.work / name

    def client_data(self, name: str) -> Path:
        if name == CLIENTS[0]:
            return self.data
        return self.data_b or self.work / "copy-b"

    def ssh_log(self, name: str) -> Path:
        return self.work / "logs" / f"ssh-{name}.log"

    def serve_rss(self, name: str) -> Path:
        return self.work / "logs" / f"serve-{name}.rss"

    def borg_url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.sshd.port}{self.work / 'borg' / 'repo'}"


def timed_wrapper(setup: Setup, name: str, home: Path, **env: str) -> str:
    """The start of a forced command: a throwaway HOME (and `env`), GNU time around the
    server (its peak RSS appended to a file per client); the server's argv follows."""
    words = ["/usr/bin/env", f"HOME={home}", *(f"{k}={v}" for k, v in env.items())]
    if os.access(GNU_TIME, os.X_OK):
        words += [GNU_TIME, "-a", "-o", str(setup.serve_rss(name)), "-f", "%M"]
    return shlex.join(words)


def prepare(setup: Setup, runs: list[str]) -> None:
    """Once: sshd, keys, the hub's and clients' configs, authorized_keys, the copy for hub2."""
    w = setup.work
    for sub in ("keys", "logs", "hub", *CLIENTS, "borg", "local"):
        if (w / sub).exists():
            shutil.rmtree(w / sub)
        (w / sub).mkdir(parents=True)
    setup.sshd.start()
    hub_home = w / "hub" / "home"
    setup.hub_config.write_text(
        "[vault]\n"
        f"store = {toml_str((w / 'hub' / 'store').as_uri())}\n"
        f"state_dir = {toml_str(str(w / 'hub' / 'state'))}\n"
    )
    lines = []
    for name in CLIENTS:
        key = w / "keys" / name
        _keygen(key, f"{name}@hub-bench")
        program = f"{timed_wrapper(setup, name, hub_home)} {shlex.quote(str(setup.vaultfs))}"
        add = [*setup.vf(setup.hub_config), "clients", "add", name, f"{key}.pub", "--program", program]
        done = subprocess.run(add, capture_output=True, text=True, env=setup.env(hub_home))
        if done.returncode != 0:
            raise SystemExit(f"vaultfs clients add failed: {done.stderr.strip()}")
        lines.append(done.stdout.strip())
        write_client_config(setup, name, key)
    if setup.borg:
        key = w / "keys" / "borg"
        _keygen(key, "borg@hub-bench")
        serve_home = w / "borg" / "serve-home"
        serve_home.mkdir(parents=True)
        command = " ".join(
            [
                timed_wrapper(setup, "borg", serve_home, BORG_BASE_DIR=str(serve_home)),
                shlex.join([setup.borg, "serve", "--restrict-to-path", str(w / "borg" / "repo")]),
            ]
        )
        lines.append(f'command="{command}",restrict {(w / "keys" / "borg.pub").read_text().strip()}')
    setup.sshd.authorized_keys.write_text("\n".join(lines) + "\n")
    copy = w / "copy-b"
    if copy.exists():
        shutil.rmtree(copy)
    if "hub2" in runs and setup.data_b is None:
        print(f"copying {setup.data} to {copy} for hub2's second client", flush=True)
        subprocess.run(["cp", "-a", f"{setup.data}/.", str(copy)], check=True)


def write_client_config(setup: Setup, name: str, key: Path) -> None:
    ssh = setup.sshd.ssh_args(key, setup.ssh_log(name))
    d = setup.client_dir(name)
    (d / "vault.toml").write_text(
        "[hub]\n"
        f"url = {toml_str(f'ssh://root@127.0.0.1:{setup.sshd.port}')}\n"
        f"ssh_command = {toml_str(shlex.join(ssh))}\n"
        "\n[vault]\n"
        f"state_dir = {toml_str(str(d / 'state'))}\n"
        f"\n[collections.{COLLECTION}]\n"
        f"path = {toml_str(str(setup.client_data(name)))}\n"
        'tier = "cold"\n'
    )


class Steps:
    """Runs a run's commands into WORK/logs/roundN/, recording them and the first failure."""

    def __init__(self, setup: Setup, result: Result) -> None:
        self.setup, self.result = setup, result
        self.logs = setup.work / "logs" / f"round{result.round}"

    def run(
        self, label: str, argv: list[str], env: dict[str, str], together: bool = False
    ) -> Measured | None:
        """One command, timed; `together`: one of hub2's two at once (the caller synced and
        prints)."""
        if self.result.status != "ok":
            return None
        if not together:
            print(f"  {self.result.run}: {label} ...", flush=True)
            os.sync()  # untimed: earlier steps' dirty pages must not be written back on our clock
        m = run_measured(argv, env, self.logs / f"{self.result.run}-{label}.log")
        self.result.steps.append(m)
        if m.returncode != 0:
            self.fail(label, m.stderr_tail or f"exit status {m.returncode}")
            return None
        if not together:
            print(f"  {self.result.run}: {label} {m.wall_s:.2f} s", flush=True)
        return m

    def fail(self, label: str, error: str) -> None:
        if self.result.status == "ok":
            self.result.status, self.result.failed_step, self.result.error = "failed", label, error
            print(f"  {self.result.run}: {label} failed", flush=True)

    def client_rss(self, *ms: Measured | None) -> None:
        peaks = [m.peak_rss_kib / 1024 for m in ms if m is not None and m.peak_rss_kib]
        self.result.client_rss_mib = max_of([self.result.client_rss_mib, *peaks])


def frames_sent(m: Measured) -> int | None:
    """`bytes_sent` of `vaultfs snapshot --json` (the frames the client wrote)."""
    try:
        return int(json.loads(Path(m.log).read_text())["bytes_sent"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fresh(*paths: Path) -> None:
    for p in paths:
        if p.exists():
            shutil.rmtree(p)


def bench_local(setup: Setup, round_no: int) -> Result:
    result = Result("local", round_no)
    steps = Steps(setup, result)
    d = setup.work / "local"
    fresh(d / "store", d / "state")
    config = d / "vault.toml"
    config.write_text(
        "[vault]\n"
        f"store = {toml_str((d / 'store').as_uri())}\n"
        f"state_dir = {toml_str(str(d / 'state'))}\n"
        f'\n[collections.{COLLECTION}]\npath = {toml_str(str(setup.data))}\ntier = "cold"\n'
    )
    env = setup.env(d / "home")
    warm_page_cache(setup.data)
    steps.run("init", [*setup.vf(config), "init"], env)
    first = steps.run("snapshot1", [*setup.vf(config), "snapshot", COLLECTION, "--json"], env)
    again = steps.run("snapshot2", [*setup.vf(config), "snapshot", COLLECTION, "--json"], env)
    result.first_s = first.wall_s if first else None
    result.nochange_s = again.wall_s if again else None
    steps.client_rss(first, again)
    result.repo_bytes = du_bytes(d / "store")
    return result


def init_hub(setup: Setup, steps: Steps, clients: tuple[str, ...]) -> None:
    """A fresh hub vault and fresh client state dirs (their files caches), not timed."""
    fresh(setup.work / "hub" / "store", setup.work / "hub" / "state")
    for name in clients:
        fresh(setup.client_dir(name) / "state")
    steps.run("init", [*setup.vf(setup.hub_config), "init"], setup.env(setup.work / "hub" / "home"))


def client_snapshot(
    setup: Setup, steps: Steps, name: str, label: str, together: bool = False
) -> Measured | None:
    config = setup.client_dir(name) / "vault.toml"
    env = setup.env(setup.client_dir(name) / "home")
    m = steps.run(label, [*setup.vf(config), "snapshot", "--json"], env, together)
    if m is None and steps.result.failed_step == label:
        try:
            tail = setup.ssh_log(name).read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = ["(none)"]
        steps.result.error += "\nssh's log: " + "\n".join(tail)
    return m


def bench_hub(setup: Setup, round_no: int) -> Result:
    result = Result("hub", round_no)
    steps = Steps(setup, result)
    name = CLIENTS[0]
    init_hub(setup, steps, (name,))
    warm_page_cache(setup.data)
    rss = Counter(setup.serve_rss(name), RSS_LINE)
    with polling(setup.sshd) as poller:
        wire = Counter(setup.ssh_log(name), TRANSFERRED)
        first = client_snapshot(setup, steps, name, "snapshot1")
        result.first_sent = sent_bytes(wire)
        wire = Counter(setup.ssh_log(name), TRANSFERRED)
        again = client_snapshot(setup, steps, name, "snapshot2")
        result.nochange_sent = sent_bytes(wire)
    result.first_s = first.wall_s if first else None
    result.nochange_s = again.wall_s if again else None
    result.nochange_frames_sent = frames_sent(again) if again else None
    steps.client_rss(first, again)
    result.server_rss_mib = max_of([*rss_peaks_mib(rss), poller.peak_one_kib / 1024 or None])
    result.server_rss_sum_mib = poller.peak_sum_kib / 1024 or None
    result.repo_bytes = du_bytes(setup.work / "hub" / "store")
    return result


def both_clients(setup: Setup, steps: Steps, label: str) -> tuple[float, list[Measured | None], int | None]:
    """Both clients' snapshots at once (one thread each): the wall time until both are done,
    each one's measurement, and the bytes both sent on the wire."""
    out: list[Measured | None] = [None, None]
    wires = [Counter(setup.ssh_log(name), TRANSFERRED) for name in CLIENTS]

    def one(i: int) -> None:
        out[i] = client_snapshot(setup, steps, CLIENTS[i], f"{label}-{'ab'[i]}", together=True)

    threads = [threading.Thread(target=one, args=(i,)) for i in (0, 1)]
    print(f"  hub2: {label}, both clients at once ...", flush=True)
    os.sync()  # untimed, once for both
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if steps.result.status == "ok":
        each = ", ".join(f"{n} {m.wall_s:.2f} s" for n, m in zip(CLIENTS, out, strict=True) if m)
        print(f"  hub2: {label} {wall:.2f} s ({each})", flush=True)
    sent = [sent_bytes(w) for w in wires]
    return wall, out, None if None in sent else sum(x for x in sent if x is not None)


def bench_hub2(setup: Setup, round_no: int) -> Result:
    result = Result("hub2", round_no)
    steps = Steps(setup, result)
    init_hub(setup, steps, CLIENTS)
    for name in CLIENTS:
        warm_page_cache(setup.client_data(name))
    peaks: list[float] = []
    with polling(setup.sshd) as poller:
        for label in ("first", "nochange"):
            if result.status != "ok":
                break
            rss = [Counter(setup.serve_rss(name), RSS_LINE) for name in CLIENTS]
            wall, both, sent = both_clients(setup, steps, "snapshot1" if label == "first" else "snapshot2")
            steps.client_rss(*both)
            phase = [p for c in rss for p in rss_peaks_mib(c)]
            peaks += phase
            if len(phase) == len(CLIENTS):  # GNU time's exact peaks of the two serves at once
                result.server_rss_bound_mib = max_of([result.server_rss_bound_mib, sum(phase)])
            if result.status == "ok":
                setattr(result, f"{label}_s", wall)
                setattr(result, f"{label}_sent", sent)
                for name, m in zip(CLIENTS, both, strict=True):
                    result.extra[f"{name}_{label}_s"] = m.wall_s if m else -1.0
    result.server_rss_mib = max_of([*peaks, poller.peak_one_kib / 1024 or None])
    result.server_rss_sum_mib = poller.peak_sum_kib / 1024 or None
    result.extra["serve_processes_at_once"] = poller.most_at_once
    result.repo_bytes = du_bytes(setup.work / "hub" / "store")
    return result


def bench_borg(setup: Setup, round_no: int) -> Result:
    result = Result("borg", round_no)
    steps = Steps(setup, result)
    if not setup.borg:
        steps.fail("init", "borg is not installed (tools/setup --bench installs it)")
        return result
    d = setup.work / "borg"
    fresh(d / "repo", d / "client-home")
    key = setup.work / "keys" / "borg"
    env = setup.env(
        d / "client-home",
        BORG_BASE_DIR=str(d / "client-home"),  # cache, keys and security dir stay in WORKDIR
        BORG_RSH=shlex.join(setup.sshd.ssh_args(key, setup.ssh_log("borg"))),
        BORG_PASSPHRASE="bench",
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
    )
    url = setup.borg_url()
    warm_page_cache(setup.data)
    steps.run("init", [setup.borg, "init", "--encryption=none", url], env)
    rss = Counter(setup.serve_rss("borg"), RSS_LINE)
    measured: list[Measured | None] = []
    with polling(setup.sshd) as poller:
        for n in (1, 2):
            wire = Counter(setup.ssh_log("borg"), TRANSFERRED)
            create = [setup.borg, "create", "--compression", "zstd,3", f"{url}::snap{n}", str(setup.data)]
            measured.append(steps.run(f"snapshot{n}", create, env))
            if n == 1:
                result.first_sent = sent_bytes(wire)
            else:
                result.nochange_sent = sent_bytes(wire)
    first, again = measured
    result.first_s = first.wall_s if first else None
    result.nochange_s = again.wall_s if again else None
    steps.client_rss(first, again)
    result.server_rss_mib = max_of([*rss_peaks_mib(rss), poller.peak_one_kib / 1024 or None])
    result.server_rss_sum_mib = poller.peak_sum_kib / 1024 or None
    result.repo_bytes = du_bytes(d / "repo")
    return result


BENCH = {"local": bench_local, "hub": bench_hub, "hub2": bench_hub2, "borg": bench_borg}


# --------------------------------------------------------------------------- summarising


@dataclass
class Summary:
    """One run over all rounds: medians of times, bytes and sizes; maxima of peak RSS."""

    run: str
    status: str
    error: str  # "round N, step: message" of the first failed round
    rounds_ok: int
    rounds_run: int
    first_s: float | None
    first_s_min: float | None
    first_s_max: float | None
    nochange_s: float | None
    nochange_s_min: float | None
    nochange_s_max: float | None
    first_sent: float | None
    nochange_sent: float | None
    nochange_frames_sent: float | None
    client_rss_mib: float | None
    server_rss_mib: float | None
    server_rss_sum_mib: float | None
    server_rss_bound_mib: float | None
    repo_bytes: float | None
    rounds: list[Result]


def summarise(rounds: list[Result]) -> Summary:
    failed = [r for r in rounds if r.status != "ok"]

    def med(key: str) -> float | None:
        return median_of([getattr(r, key) for r in rounds])

    first, again = [r.first_s for r in rounds], [r.nochange_s for r in rounds]
    return Summary(
        run=rounds[0].run,
        status="failed" if failed else "ok",
        error=f"round {failed[0].round}, {failed[0].failed_step}: {failed[0].error}" if failed else "",
        rounds_ok=len(rounds) - len(failed),
        rounds_run=len(rounds),
        first_s=med("first_s"),
        first_s_min=min_of(first),
        first_s_max=max_of(first),
        nochange_s=med("nochange_s"),
        nochange_s_min=min_of(again),
        nochange_s_max=max_of(again),
        first_sent=med("first_sent"),
        nochange_sent=med("nochange_sent"),
        nochange_frames_sent=med("nochange_frames_sent"),
        client_rss_mib=max_of([r.client_rss_mib for r in rounds]),
        server_rss_mib=max_of([r.server_rss_mib for r in rounds]),
        server_rss_sum_mib=max_of([r.server_rss_sum_mib for r in rounds]),
        server_rss_bound_mib=max_of([r.server_rss_bound_mib for r in rounds]),
        repo_bytes=med("repo_bytes"),
        rounds=rounds,
    )


def ratios(s: dict[str, Summary], data_bytes: int) -> dict[str, float | None]:
    """The hub against the others, from the medians over rounds."""

    def get(run: str, key: str) -> float | None:
        return getattr(s[run], key) if run in s else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    sent = get("hub", "nochange_sent")
    return {
        "first_vs_borg": ratio(get("hub", "first_s"), get("borg", "first_s")),
        "first_vs_local": ratio(get("hub", "first_s"), get("local", "first_s")),
        "nochange_vs_borg": ratio(get("hub", "nochange_s"), get("borg", "nochange_s")),
        "nochange_vs_local": ratio(get("hub", "nochange_s"), get("local", "nochange_s")),
        "nochange_sent_pct": None if sent is None or not data_bytes else 100 * sent / data_bytes,
        "hub2_rss_mib": get("hub2", "server_rss_sum_mib"),
        "hub2_rss_bound_mib": get("hub2", "server_rss_bound_mib"),
    }


# --------------------------------------------------------------------------- reporting


def fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_range(low: float | None, high: float | None, digits: int) -> str:
    return "–" if low is None or high is None else f"{low:.{digits}f}–{high:.{digits}f}"


def fmt_bytes(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v / MIB:.1f} MiB" if v >= MIB else f"{v / 1024:.1f} KiB" if v >= 1024 else f"{v:.0f} B"


def markdown(results: dict[str, Summary]) -> str:
    lines = [
        "| run | rounds ok | first s | first min–max | no-change s | no-change min–max | first sent "
        "(wire) | no-change sent (wire) | no-change sent (frames) | client peak RSS MiB | serve peak "
        "RSS MiB (one process) | serve RSS MiB (sum at once) | repo MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in results.values():
        name = s.run
        if s.status != "ok":
            why = s.error.split("\n", 1)[0][:70].replace("|", "/")
            name = f"{s.run} (failed: {why})"
        repo = s.repo_bytes / MIB if s.repo_bytes is not None else None
        lines.append(
            f"| {name} | {s.rounds_ok}/{s.rounds_run} | {fmt(s.first_s, 2)} | "
            f"{fmt_range(s.first_s_min, s.first_s_max, 2)} | {fmt(s.nochange_s, 2)} | "
            f"{fmt_range(s.nochange_s_min, s.nochange_s_max, 2)} | {fmt_bytes(s.first_sent)} | "
            f"{fmt_bytes(s.nochange_sent)} | {fmt_bytes(s.nochange_frames_sent)} | "
            f"{fmt(s.client_rss_mib)} | {fmt(s.server_rss_mib)} | {fmt(s.server_rss_sum_mib)} | "
            f"{fmt(repo)} |"
        )
    return "\n".join(lines)


def targets_table(got: dict[str, float | None]) -> str:
    lines = ["| measure | value | target | met |", "|---|---:|---:|:---:|"]
    for label, key, limit, unit in TARGETS:
        v = got[key]
        met = "n/a" if v is None else ("yes" if v <= limit else "NO")
        digits = 3 if unit == "%" else 2 if unit else 1
        shown = "–" if v is None else f"{v:.{digits}f}{unit}"
        target = f"{limit:.2f}×" if unit == "×" else f"{limit:g}{unit}"
        lines.append(f"| {label} | {shown} | ≤ {target} | {met} |")
    v = got["hub2_rss_bound_mib"]
    lines.append(
        "| hub peak RSS, two clients at once, upper bound (sum of each serve's own peak), MiB "
        f"| {fmt(v)} | (≤ 200) | {'–' if v is None else 'yes' if v <= 200 else 'no'} |"
    )
    v = got["nochange_vs_local"]
    lines.append(f"| no-change snapshot, hub / local (no target) | {fmt(v, 2)}{'×' if v else ''} | – | – |")
    return "\n".join(lines)


def versions(setup: Setup) -> dict[str, str]:
    return {
        "vaultfs": command_output([str(setup.vaultfs), "--version"]),
        "borg": command_output([setup.borg, "--version"]) if setup.borg else "not installed",
        "ssh": command_output(["ssh", "-V"]),
    }


def report(
    setup: Setup, results: dict[str, Summary], data_stats: tuple[int, int, int], rounds: int
) -> dict[str, float | None]:
    got = ratios(results, data_stats[2])
    env = environment()
    print()
    print(
        f"{env['cpus']} × {env['cpu']}, {env['memory']} RAM, Linux {env['kernel']}; page cache "
        f"warmed with tar before each run, os.sync() before each step; {rounds} round(s), "
        "interleaved: medians of times, bytes and sizes, maximum of peak RSS"
    )
    for tool, version in versions(setup).items():
        print(f"{tool}: {version}")
    print(
        "sent (wire): ssh's own count of the SSH packets the client wrote (encrypted, handshake "
        "included); sent (frames): the vaultfs client's count of its protocol frames"
    )
    print()
    print(markdown(results))
    print()
    print(targets_table(got))
    for s in results.values():
        for r in s.rounds:
            if r.status != "ok":
                print(f"\n{r.run} failed at {r.failed_step} in round {r.round}:\n{r.error}")
    return got


# --------------------------------------------------------------------------- main


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through main's finally: sshd and serves stopped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="directory to back up")
    p.add_argument("--work", type=Path, required=True, help="sshd, repositories, copies, logs")
    p.add_argument("--only", default=",".join(RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians (default 3)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--vaultfs", type=Path, default=REPO_ROOT / ".venv" / "bin" / "vaultfs")
    p.add_argument(
        "--data-b",
        type=Path,
        help="hub2: the second client's tree (default: a copy of --data under --work)",
    )
    args = p.parse_args(argv)
    data, work = data_and_work(p, args.data, args.work)
    data_b = data_and_work(p, args.data_b, args.work)[0] if args.data_b else None
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(only) - set(RUNS))
    if unknown:
        p.error(f"unknown run(s): {', '.join(unknown)}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if os.geteuid() != 0:
        p.error("needs root: sshd, and serve logging in as root with a forced command")
    vaultfs = args.vaultfs.absolute()  # not resolved: a venv's script, kept as the forced command names it
    if not os.access(vaultfs, os.X_OK):
        p.error(f"--vaultfs {vaultfs} is not an executable")
    selected = [r for r in RUNS if r in only]
    work.mkdir(parents=True, exist_ok=True)
    stats = dataset_stats(data)
    print(f"dataset {data}: {stats[0]} files, {stats[1]} directories, {stats[2] / MIB:.1f} MiB")
    borg = shutil.which("borg")
    setup = Setup(
        data,
        work,
        vaultfs,
        os.path.abspath(borg) if borg else None,
        Sshd(work / "sshd"),
        dict(os.environ),
        data_b,
    )
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    per_round: dict[str, list[Result]] = {r: [] for r in selected}
    try:
        prepare(setup, selected)
        print(f"sshd on 127.0.0.1:{setup.sshd.port} (log: {setup.sshd.log})", flush=True)
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}/{args.rounds}", flush=True)
            for run in selected:
                per_round[run].append(BENCH[run](setup, round_no))
    finally:
        setup.sshd.stop()
    results = {r: summarise(rs) for r, rs in per_round.items()}
    got = report(setup, results, stats, args.rounds)
    if args.json:
        payload = {
            "environment": environment(),
            "versions": versions(setup),
            "dataset": {"path": str(data), "files": stats[0], "directories": stats[1], "bytes": stats[2]},
            "data_b": str(data_b) if data_b else "a copy of the dataset (WORK/copy-b)",
            "results": {r: asdict(s) for r, s in results.items()},
            "ratios": got,
            "targets": {key: limit for _, key, limit, _ in TARGETS},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all(s.status == "ok" for s in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
