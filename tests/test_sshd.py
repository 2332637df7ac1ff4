"""The tests' own sshd (tests/sshd.py) behaves as a hub's sshd must: a key's forced command is
what runs, whatever the client asks; a key it was not given is refused; a client that does
not know the host key refuses the server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import vaultfs
from tests.sshd import Sshd, vaultfs_command


def test_the_forced_command_runs_instead_of_what_the_client_asks(sshd: Sshd) -> None:
    command = vaultfs_command("--version")
    assert '"' not in command  # written into command="…" below as it is
    sshd.authorize(f'command="{command}",restrict {sshd.client_public_key.read_text()}')
    done = sshd.ssh("echo", "hi")
    assert done.returncode == 0, f"{done.stderr}\n{sshd.log()}"
    assert done.stdout == f"vaultfs {vaultfs.__version__}\n"
    assert "Accepted publickey for root" in sshd.log()


def test_a_key_not_in_authorized_keys_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    marker = tmp_path / "ran"
    sshd.authorize(f'command="touch {marker}",restrict {other.with_suffix(".pub").read_text()}')
    done = sshd.ssh("true")
    assert done.returncode == 255
    assert "Permission denied (publickey)" in done.stderr
    assert not marker.exists()


def test_a_wrong_host_key_is_refused_before_anything_runs(sshd: Sshd, tmp_path: Path) -> None:
    impostor = tmp_path / "impostor_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    marker = tmp_path / "ran"
    sshd.authorize(f'command="touch {marker}",restrict {sshd.client_public_key.read_text()}')
    good = sshd.known_hosts.read_text()
    key = " ".join(impostor.with_suffix(".pub").read_text().split()[:2])
    sshd.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {key}\n")
    done = sshd.ssh("true")
    assert done.returncode == 255
    assert "Host key verification failed" in done.stderr
    assert not marker.exists()
    sshd.known_hosts.write_text(good)  # and with the right one, the same login works
    assert sshd.ssh("true").returncode == 0
    assert marker.exists()
