"""``vaultfs clients add``: the authorized_keys line that lets a client machine into the hub
(docs/hub.md), checked with real ssh-keygen keys, ssh-keygen's own reading of the line, and
a real sshd running the line's forced command."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sshd import Sshd, vaultfs_command
from tests.vaultenv import VaultEnv


def keygen(path: Path, kind: str, *extra: str) -> Path:
    """A fresh key pair made by ssh-keygen; its public half."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", "me@laptop", "-f", str(path)], check=True
    )
    return path.with_suffix(".pub")


def fingerprint(path: Path) -> str:
    """ssh-keygen's fingerprint of the key in a .pub or authorized_keys file (options and all)."""
    done = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True)
    return done.stdout.split()[1]


@pytest.mark.parametrize(
    ("kind", "extra"), [("ed25519", ()), ("rsa", ("-b", "1024")), ("ecdsa", ("-b", "384"))]
)
def test_the_line_forces_serve_for_the_client_with_the_key_as_ssh_keygen_wrote_it(
    file_vault: VaultEnv, tmp_path: Path, kind: str, extra: tuple[str, ...]
) -> None:
    pub = keygen(tmp_path / f"id_{kind}", kind, *extra)
    line = file_vault.run("clients", "add", "laptop", str(pub)).stdout
    command = shlex.join([sys.executable, "-m", "vaultfs.cli"])  # run as python -m: this interpreter
    assert line == (
        f'command="{command} --config {file_vault.config_path} serve --stdio --client laptop",restrict '
        + pub.read_text()
    )
    written = tmp_path / "authorized_keys"
    written.write_text(line)
    assert fingerprint(written) == fingerprint(pub)  # sshd's own parser reads the same key in it
    doc = file_vault.json("clients", "add", "laptop", str(pub))
    assert doc["authorized_keys_line"] + "\n" == line
    assert doc["client"] == "laptop"
    assert doc["key_type"] == pub.read_text().split()[0]
    assert doc["comment"] == "me@laptop"


def test_run_as_the_script_the_line_names_its_path(file_vault: VaultEnv, tmp_path: Path) -> None:
    """Found on PATH through a symlink (as /usr/local/bin/vaultfs would be), the script is named
    by the symlink's absolute path, not resolved into the virtualenv behind it."""
    script = Path(sys.executable).parent / "vaultfs"  # what `pip install` made
    link = tmp_path / "bin" / "vaultfs"
    link.parent.mkdir()
    link.symlink_to(script)
    pub = keygen(tmp_path / "id", "ed25519")
    done = subprocess.run(
        ["vaultfs", "--config", str(file_vault.config_path), "clients", "add", "laptop", str(pub)],
        capture_output=True,
        text=True,
        env=file_vault.env(PATH=f"{link.parent}:/usr/bin:/bin"),
        check=True,
    )
    assert done.stdout.startswith(f'command="{link} --config {file_vault.config_path} serve --stdio')


def test_bad_names_and_files_are_refused_with_what_to_do(file_vault: VaultEnv, tmp_path: Path) -> None:
    pub = keygen(tmp_path / "id", "ed25519")
    key_line = pub.read_text()
    files = {
        "private": ((tmp_path / "id").read_text(), "this is a private key"),
        "options": (f'command="sh",restrict {key_line}', "already has options"),
        "two keys": (key_line + key_line.replace("me@laptop", "other"), "holds 2 lines"),
        "garbage": ("hello world\n", "not an OpenSSH public key"),
        "damaged": (key_line.replace("AAAA", "AAAB", 1), "is damaged"),
        "empty": ("\n# nothing\n", "holds no public key"),
    }
    for what, (text, expected) in files.items():
        bad = tmp_path / what.replace(" ", "_")
        bad.write_text(text)
        done = file_vault.run("clients", "add", "laptop", str(bad), expect=2)
        assert expected in done.stderr, what
        assert done.stdout == "" and done.stderr.count("\n") == 1, what
    done = file_vault.run("clients", "add", "laptop", str(tmp_path / "missing.pub"), expect=2)
    assert "No such file or directory" in done.stderr
    photos = tmp_path / "photos"
    photos.mkdir()
    file_vault.extra_config = f'[collections."laptop.photos"]\npath = "{photos}"\n'  # in laptop's prefix
    file_vault.write_config()
    for name, expected in [
        ("lap.top", "client name 'lap.top'"),
        ("_laptop", "client name '_laptop'"),
        ("x" * 33, "at most 32 characters"),
        ("laptop", "already has collection 'laptop.photos'"),
    ]:
        done = file_vault.run("clients", "add", name, str(pub), expect=2)
        assert expected in done.stderr and done.stdout == "", name
    assert file_vault.run("clients", "add", "x" * 32, str(pub)).stdout.count("--client " + "x" * 32) == 1


def test_the_printed_line_lets_the_client_in_to_run_only_vaultfs_serve(
    sshd: Sshd, file_vault: VaultEnv, tmp_path: Path
) -> None:
    """The line pasted into sshd's authorized_keys, with a program path and config path that
    need quoting: whatever the client asks, sshd runs vaultfs with exactly the line's
    arguments (a wrapper records them, then execs the real vaultfs), and never a terminal."""
    hub_config = tmp_path / "hub config" / "vault.toml"
    hub_config.parent.mkdir()
    hub_config.write_text(file_vault.config_path.read_text())
    record = tmp_path / "record"
    program = tmp_path / 'hub "bin"' / "vaultfs"
    program.parent.mkdir()
    program.write_text(
        "#!/bin/sh\n"
        f'printf \'%s\\n\' "$@" "asked: $SSH_ORIGINAL_COMMAND" > {shlex.quote(str(record))}\n'
        f'exec {vaultfs_command()} "$@"\n'
    )
    program.chmod(0o755)
    marker = tmp_path / "client ran this"
    line = file_vault.run(
        "--config", str(hub_config), "clients", "add", "laptop", str(sshd.client_public_key),
        "--program", shlex.quote(str(program)), config=False,
    ).stdout  # fmt: skip
    assert '\\"bin\\"' in line  # the program's quotes, escaped for sshd
    sshd.authorize(line)
    asked = shlex.quote(str(marker))
    done = sshd.ssh("touch", asked, options=("-tt",))  # restrict: no terminal, and ssh -tt gives up
    assert "PTY allocation request failed" in done.stderr and not record.exists(), sshd.log()
    done = sshd.ssh("touch", asked)
    assert done.returncode != 255, f"{done.stderr}\n{sshd.log()}"  # 255: ssh itself failed
    assert record.read_text().splitlines() == [
        "--config",
        str(hub_config),
        "serve",
        "--stdio",
        "--client",
        "laptop",
        f"asked: touch {asked}",
    ]
    assert not marker.exists()
