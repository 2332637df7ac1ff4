"""A real OpenSSH server for a test: the hub's transport (docs/hub.md), end to end.

* ``sshd`` (function): `/usr/sbin/sshd` listening on 127.0.0.1 on a free port, with its own
  fresh host key, config and authorized_keys file under the test's tmp directory, and a
  fresh client key pair; yields an `Sshd`. Logins are by key only, as root (the tests run as
  root); what a key may run is decided by its authorized_keys line alone, exactly as for a
  hub's ``vault`` user. Ready once sshd logs "Server listening" (no sleeps); teardown
  stops it and waits for it.
* `vaultfs_command(*args, **env)`: the shell command that runs this checkout's vaultfs with
  this interpreter, for a forced command (sshd starts it through the user's shell with a
  clean environment, so PYTHONPATH and the tests' fake AWS credentials are passed with env).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import vaultfs
from tests.moto_server import free_port

SSHD = "/usr/sbin/sshd"
READY_TIMEOUT = 20.0  # seconds for sshd to listen; it takes milliseconds unless the machine is loaded
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it; a service manager usually makes it


def vaultfs_command(*args: str, **env: str) -> str:
    """``env PYTHONPATH=… AWS_…=… PYTHON -m vaultfs.cli ARGS``, shell-quoted: this
    interpreter running the vaultfs the tests import, with the tests' AWS variables (fake
    credentials, see tests/moto_server.py) and `env` added, for an authorized_keys command."""
    variables = {"PYTHONPATH": str(Path(vaultfs.__file__).resolve().parent.parent)}
    variables.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    variables.update(env)
    words = ["env", *(f"{k}={v}" for k, v in variables.items()), sys.executable, "-m", "vaultfs.cli", *args]
    return shlex.join(words)


@dataclass
class Sshd:
    """A running sshd and a client key it can be told to accept."""

    tmp: Path
    port: int
    client_key: Path  # the private key; ssh_command uses it
    client_public_key: Path  # its .pub, one line as ssh-keygen wrote it
    known_hosts: Path  # the one line naming this sshd's host key
    authorized_keys: Path  # what authorize() writes
    process: subprocess.Popen[bytes]
    _lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``ssh://root@127.0.0.1:PORT``: a client config's ``[hub] url``."""
        return f"ssh://root@127.0.0.1:{self.port}"

    @property
    def ssh_command(self) -> str:
        """The ssh program and options for this server (a client config's ``[hub] ssh_command``):
        our key only, our known_hosts only, no prompts, no config files."""
        return shlex.join(self.ssh_args)

    @property
    def ssh_args(self) -> list[str]:
        return [
            "ssh",
            "-F",
            "none",
            "-p",
            str(self.port),
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
        ]

    def authorize(self, text: str) -> None:
        """Replace the authorized_keys content (one line or several); sshd reads it at each login."""
        self.authorized_keys.write_text(text if text.endswith("\n") else text + "\n")

    def ssh(
        self, *remote: str, options: tuple[str, ...] = (), timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Log in as root with `ssh_command` (plus `options`) and ask to run `remote`; stdin is empty."""
        return subprocess.run(
            [*self.ssh_args, *options, "root@127.0.0.1", *remote],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log(self) -> str:
        """What sshd logged so far (its stderr), to show in a failing assertion."""
        return "".join(self._lines)


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _config(tmp: Path, port: int) -> Path:
    text = f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {tmp / "host_key"}
PidFile none
AuthorizedKeysFile {tmp / "authorized_keys"}
# pytest's tmp directories sit under the world-writable /tmp, which StrictModes refuses
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# keys only; what a key may run is up to its authorized_keys line
PermitRootLogin prohibit-password
LogLevel INFO
"""
    path = tmp / "sshd_config"
    path.write_text(text)
    return path


def _drain(process: subprocess.Popen[bytes], lines: list[str], ready: threading.Event) -> None:
    """Keep sshd's stderr (its log, -e) in `lines` until it closes; `ready` when listening or gone."""
    assert process.stderr is not None
    for raw in process.stderr:
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        if line.startswith("Server listening on"):
            ready.set()
    ready.set()  # sshd exited: whoever waits looks at why


def _start(tmp: Path) -> tuple[subprocess.Popen[bytes], list[str], threading.Thread, int]:
    """sshd on a free port; a port taken between free_port() and sshd's bind is tried again."""
    for _attempt in range(5):
        port = free_port()
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(_config(tmp, port))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        lines: list[str] = []
        ready = threading.Event()
        reader = threading.Thread(target=_drain, args=(process, lines, ready), name="sshd-log")
        reader.start()
        listening = ready.wait(READY_TIMEOUT)
        if listening and process.poll() is None:
            return process, lines, reader, port
        process.kill()
        process.wait()
        reader.join()
        if "Address already in use" not in "".join(lines):
            raise AssertionError(f"sshd did not start within {READY_TIMEOUT}s:\n{''.join(lines)}")
    raise AssertionError("sshd found no free port in 5 tries")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    tmp = tmp_path / "sshd"
    tmp.mkdir()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    _keygen(tmp / "host_key", "vaultfs-test-host")
    _keygen(tmp / "client_key", "vaultfs-test-client")
    authorized = tmp / "authorized_keys"
    authorized.write_text("")
    process, lines, reader, port = _start(tmp)
    host_key = " ".join((tmp / "host_key.pub").read_text().split()[:2])
    known_hosts = tmp / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key}\n")
    server = Sshd(
        tmp, port, tmp / "client_key", tmp / "client_key.pub", known_hosts, authorized, process, lines
    )
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=30)
