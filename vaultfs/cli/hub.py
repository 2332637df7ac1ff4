"""The hub's commands (docs/hub.md): a NAS that keeps the snapshots of client machines.

On the hub, ``serve --stdio --client NAME`` is the command an authorized_keys entry
forces: one client's session over stdin and stdout. On a client (a config with ``[hub]``
instead of ``[vault].store``) ``snapshot``, ``versions`` and ``restore fetch`` go through
the hub; every other command that would change or read the vault itself is refused
(`refuse_on_client`).

``vaultfs clients add`` prints the ``authorized_keys`` line that lets one client machine in:
its key may only run ``vaultfs serve --stdio --client NAME`` (the forced command), with
every other SSH feature off (``restrict``). It edits no file: the owner of the hub pastes
the line where the ``vault`` user's sshd reads it, and sees exactly what is granted.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from vaultfs.errors import EXIT_ERROR, EXIT_OK, EXIT_WARNINGS, ConfigError, SourceRefused, UsageError
from vaultfs.output import AddCommand, add_subcommand, display_path, emit_json, human_bytes, parse_target

if TYPE_CHECKING:  # imported when a command runs (startup time)
    from vaultfs.config import Config

ON_THE_HUB = "the hub keeps this machine's history; run it on the NAS"

# --- vaultfs clients add ---------------------------------------------------------------

SYSTEM_CONFIG = Path("/etc/vaultfs/vault.toml")
"""The config every user's lookup ends at: a forced command finds it without ``--config``."""

KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
"""The key types OpenSSH accepts in an authorized_keys line without further options (DSA is
disabled by OpenSSH itself; certificates need a ``cert-authority`` line, not a client's)."""

_MAX_KEY_FILE = 64 * 1024  # an RSA-16384 public key line is under 3 KiB

CLIENTS_DESCRIPTION = """\
Manage the client machines that send their snapshots to this hub over SSH
(docs/hub.md). A client machine runs `vaultfs snapshot` with `[hub] url =
"ssh://root@nas"`; its SSH key may run only `vaultfs serve --stdio --client NAME`
on the hub, and its collection `home` is the hub's collection `NAME.home`."""

ADD_DESCRIPTION = """\
Print the authorized_keys line that lets the client machine NAME in with the SSH
public key in PUBKEY_FILE (the .pub file `ssh-keygen` wrote on the client):

  command="VAULTFS --config FILE serve --stdio --client NAME",restrict TYPE KEY COMMENT

Append it to the authorized_keys file of the user the clients log in as (e.g.
~vault/.ssh/authorized_keys); nothing is written by this command. sshd then runs
that command whatever the client asks for, with the client's request in
$SSH_ORIGINAL_COMMAND, and `restrict` turns off port, agent and X11 forwarding
and terminals for the key: the key can do nothing on the hub but talk to vaultfs.

VAULTFS is the absolute path of this vaultfs program (sshd's PATH is minimal):
the `vaultfs` script when that is what runs, else this Python interpreter with
`-m vaultfs.cli`; --program replaces it. `--config FILE` names this command's
configuration (absolute) unless it is /etc/vaultfs/vault.toml, which every
user's vaultfs finds without being told.

NAME becomes the prefix of the client's collections on the hub (`laptop`'s
`home` is `laptop.home`): letters, digits, '_' and '-', at most 32 characters,
no dot, and no collection of this hub's configuration may already start with
`NAME.`.

Exit status 2: NAME or PUBKEY_FILE is not usable (the message says why: a
private key, a line that already has options, several keys, not a key)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    """Add ``vaultfs clients`` and its subcommands, and ``vaultfs serve``."""
    _register_clients(add)
    _register_serve(add)


def _register_clients(add: AddCommand) -> None:
    cp = add("clients", "manage the client machines that send snapshots to this hub", CLIENTS_DESCRIPTION)
    csub = cp.add_subparsers(dest="clients_command", metavar="ACTION")
    csub.required = True
    ap = add_subcommand(
        csub, "add", "print the authorized_keys line that lets a client machine in", ADD_DESCRIPTION
    )
    ap.add_argument(
        "name", metavar="NAME", help="the client's name: the prefix of its collections on the hub"
    )
    ap.add_argument("pubkey", metavar="PUBKEY_FILE", help="the client's SSH public key (e.g. id_ed25519.pub)")
    ap.add_argument(
        "--program",
        metavar="COMMAND",
        help="how sshd starts vaultfs on this hub, as a shell reads it (default: this vaultfs's path)",
    )
    ap.set_defaults(func=cmd_clients_add)


class PublicKey(NamedTuple):
    """One OpenSSH public key: what an authorized_keys line holds after its options. (A
    NamedTuple, not a frozen dataclass: this module is imported by every command to build
    the parser, and a dataclass costs ~1 ms of start-up there.)"""

    kind: str  # ssh-ed25519, ssh-rsa, ...
    data: str  # the key, base64 as ssh-keygen writes it
    comment: str  # "" when there is none

    def line(self) -> str:
        return " ".join(part for part in (self.kind, self.data, self.comment) if part)


def _register_serve(add: AddCommand) -> None:
    sp = add(
        "serve",
        "serve one hub client over stdin/stdout (run by sshd, not by hand)",
        "Serve one client machine's session over stdin and stdout: the vault side of its\n"
        "snapshots (which listings and contents are new, packing, upload, commit), its\n"
        "`versions` and its `restore fetch`. This is the command an authorized_keys entry\n"
        "on the hub forces for the client's key (docs/hub.md), as `borg serve` is;\n"
        "`vaultfs clients add NAME KEY.pub` prints that line:\n\n"
        '  command="/usr/local/bin/vaultfs serve --stdio --client laptop",restrict ssh-ed25519 AAAA...\n\n'
        "The client's collection `home` is the hub's collection `laptop.home`: listed by\n"
        "`vaultfs versions`, mounted, restored, archived like any other, and kept by the\n"
        "keep rules of [clients.laptop] in this config (a client cannot forget).\n"
        "A client reaches only its own collections; a refusal, a content whose SHA-256\n"
        "does not match, a malformed frame or a client gone mid-way commits nothing and\n"
        "is written to <state_dir>/hub.log. Two clients at once: the second waits for the\n"
        "first one's commit (its user is told).\n\n"
        "Exit status: 0 the session ended well; 1 it failed (nothing uncommitted kept);\n"
        "2 the client was refused something.",
    )
    sp.add_argument("--stdio", action="store_true", required=True, help="talk over stdin and stdout")
    sp.add_argument("--client", required=True, metavar="NAME", help="the client this key belongs to")
    sp.set_defaults(func=cmd_serve)


def cmd_clients_add(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.config import check_client_name

    name = check_client_name(args.name)
    taken = [c.name for c in config.collections if c.name.startswith(name + ".")]
    if taken:
        raise UsageError(
            f"client name {name!r}: this hub's config already has collection {taken[0]!r}, and the "
            f"client's collections would be {name}.COLLECTION too: choose another name"
        )
    key = read_public_key(Path(args.pubkey))
    command = forced_command(name, args.program or this_program(), _config_argument(config))
    line = authorized_keys_line(command, key)
    if args.json:
        emit_json(
            {
                "client": name,
                "command": command,
                "key_type": key.kind,
                "comment": key.comment,
                "authorized_keys_line": line,
            }
        )
        return EXIT_OK
    print(line)
    if not args.quiet:
        print(
            f"vaultfs: add this line to the authorized_keys of the user client {name!r} logs in as "
            "(e.g. ~vault/.ssh/authorized_keys; docs/hub.md)",
            file=sys.stderr,
        )
    return EXIT_OK


def this_program() -> str:
    """How sshd starts this same vaultfs, as a shell command: the absolute path of the
    ``vaultfs`` script when that is what runs (a symlink such as /usr/local/bin/vaultfs is
    kept, not resolved: it is the stable name), else this interpreter with ``-m vaultfs.cli``.
    Absolute, because sshd gives a forced command only a minimal PATH."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "vaultfs" and os.access(argv0, os.X_OK):
        return shlex.quote(os.path.abspath(argv0))
    return shlex.join([sys.executable, "-m", "vaultfs.cli"])


def _config_argument(config: Config) -> Path | None:
    """The config the forced command must be told of: this command's, made absolute, unless it
    is the system-wide one (a per-user default depends on whose home the command runs in)."""
    if config.source is None:
        return None
    path = Path(os.path.abspath(config.source))
    return None if path == SYSTEM_CONFIG else path


def forced_command(name: str, program: str, config: Path | None) -> str:
    """The shell command the client's key may run. `program` is used as given (it may be
    several words); the rest is quoted for the user's shell, which sshd runs it with."""
    if not program.strip() or "\n" in program or "\r" in program:
        raise UsageError("--program: give the command that starts vaultfs on this hub, on one line")
    options = ["--config", str(config)] if config is not None else []
    return " ".join([program, shlex.join([*options, "serve", "--stdio", "--client", name])])


def authorized_keys_line(command: str, key: PublicKey) -> str:
    """``command="…",restrict KEY``. Inside sshd's quotes only ``\\"`` is an escape (a
    backslash before anything else stays a backslash), so escaping each ``"`` is exact."""
    quoted = command.replace('"', '\\"')
    return f'command="{quoted}",restrict {key.line()}'


def read_public_key(path: Path) -> PublicKey:
    """The one public key in `path`, or UsageError saying what the file is instead."""
    shown = display_path(str(path))
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_KEY_FILE + 1)
    except OSError as e:
        raise UsageError(f"{shown}: {e.strerror or e}: give the client's public key file (KEY.pub)") from e
    if len(raw) > _MAX_KEY_FILE:
        raise UsageError(f"{shown}: too large for a public key: give the client's KEY.pub file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(
            f"{shown}: not an OpenSSH public key (it is not text): give the KEY.pub file"
        ) from None
    return parse_public_key(text, shown)


def parse_public_key(text: str, shown: str) -> PublicKey:
    """One ``TYPE BASE64 [COMMENT]`` line, as ssh-keygen writes KEY.pub; blank lines and
    ``#`` comments around it are allowed. `shown` names the file in errors."""
    if "PRIVATE KEY-----" in text:
        raise UsageError(
            f"{shown}: this is a private key, which never leaves the client: give its public "
            f"half, the .pub file next to it (or make one: ssh-keygen -y -f {shown} > {shown}.pub)"
        )
    if "BEGIN SSH2 PUBLIC KEY" in text:
        raise UsageError(f"{shown}: an RFC 4716 key: convert it first (ssh-keygen -i -f {shown} > KEY.pub)")
    lines = [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]
    if not lines:
        raise UsageError(
            f"{shown}: holds no public key: give the KEY.pub file ssh-keygen wrote on the client"
        )
    if len(lines) > 1:
        raise UsageError(f"{shown}: holds {len(lines)} lines: give a file with the client's one public key")
    fields = lines[0].split(None, 2)
    if fields[0] not in KEY_TYPES:
        raise UsageError(_not_a_key(fields[0], lines[0], shown))
    if len(fields) < 2 or not _key_data_matches(fields[0], fields[1]):
        raise UsageError(f"{shown}: the {fields[0]} key is damaged (not its base64 data): copy KEY.pub again")
    return PublicKey(fields[0], fields[1], fields[2] if len(fields) == 3 else "")


def _not_a_key(first: str, line: str, shown: str) -> str:
    """Why a line that does not start with a key type is refused."""
    if first == "ssh-dss":
        return f"{shown}: a DSA key, which OpenSSH refuses: make an ed25519 key (ssh-keygen -t ed25519)"
    if first.endswith("-cert-v01@openssh.com"):
        return f"{shown}: an SSH certificate: give the client's plain public key (KEY.pub)"
    if any(word in KEY_TYPES for word in line.split()):
        return (
            f"{shown}: the key line already has options before its type: give the bare key "
            "(TYPE KEY COMMENT); clients add writes the options itself"
        )
    return f"{shown}: not an OpenSSH public key (expected 'ssh-ed25519 AAAA… comment', as in KEY.pub)"


def _key_data_matches(kind: str, data: str) -> bool:
    """The base64 decodes, and the key inside names the same type (as sshd itself checks)."""
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    size = int.from_bytes(blob[:4], "big")
    return len(blob) > 4 + size and blob[4 : 4 + size] == kind.encode()


# --- vaultfs serve, and a client's commands through the hub ----------------------------


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.cli.backup import listing_json
    from vaultfs.hub.protocol import Channel
    from vaultfs.hub.server import serve
    from vaultfs.vault import Vault

    if config.hub is not None:
        raise ConfigError("this config names a [hub]: `vaultfs serve` runs on the hub, with the hub's config")
    # The frames own stdout: anything else printed there would break them.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    vault = Vault.open(config)
    try:
        return serve(vault, args.client, Channel(sys.stdin.buffer, out), listing_json)
    finally:
        vault.close()
        out.close()


def refuse_on_client(args: argparse.Namespace, config: Config) -> None:
    """A hub's client runs only what goes through the hub: one line for anything else."""
    if config.hub is not None and not getattr(args, "via_hub", False):
        raise UsageError(f"`vaultfs {args.command}` on a client of {config.hub.url}: {ON_THE_HUB}")


def snapshot(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.hub.client import Hub, scan, send_snapshot
    from vaultfs.progress import TerminalProgress

    assert config.hub is not None
    names = args.collections or [c.name for c in config.collections]
    if not names:
        raise ConfigError("no collections configured: add a [collections.NAME] table")
    selected = [config.collection(n) for n in names]
    docs: list[dict[str, Any]] = []
    refused: list[SourceRefused] = []
    warnings = False
    with Hub(config.hub) as hub:
        for coll in selected:
            try:
                with TerminalProgress(coll.name, enabled=None if not args.quiet else False) as prog:
                    intake = scan(config, coll, prog)
                    done = send_snapshot(hub, coll, os.fsencode(coll.path), intake, prog)
            except SourceRefused as e:
                refused.append(e)
                print(f"vaultfs: error: {e.message}", file=sys.stderr)
                continue
            for p in intake.problems:
                print(f"warning: {coll.name}: skipped {p.display()}", file=sys.stderr)
            for kind, count in intake.not_kept.items():
                print(f"warning: {coll.name}: not kept: {count} {kind}", file=sys.stderr)
            warnings = warnings or bool(intake.problems or intake.not_kept)
            done.update(files_hashed=intake.files_read, bytes_hashed=intake.bytes_read)
            done["skipped"] = len(intake.problems)
            docs.append(done)
            warnings = _print_hub_warnings(done) or warnings
            if not args.json and not args.quiet:
                print(_summary(done))
        sent = hub.channel.bytes_sent
    code = EXIT_ERROR if refused else EXIT_WARNINGS if warnings else EXIT_OK
    if args.json:
        emit_json(
            {
                "collections": docs,
                "refused": [e.message for e in refused],
                "bytes_sent": sent,
                "exit_code": code,
            }
        )
    return code


def _print_hub_warnings(done: dict[str, Any]) -> bool:
    """What the hub found worth a warning (exit 3): a cold collection's files modified or
    deleted (the version before keeps them, pinned on the hub), a mass removal."""
    name = done["collection"]
    for kind in ("modified", "deleted"):
        if done.get(kind):
            shown = done.get(f"{kind}_paths") or []
            more = done[kind] - len(shown)
            print(
                f"WARNING: cold collection {name}: {done[kind]} file(s) {kind} since the previous "
                "version (a failing disk or an accident?): "
                + ", ".join(display_path(p) for p in shown)
                + (f" and {more} more" if more > 0 else ""),
                file=sys.stderr,
            )
    if done.get("pinned") is not None and (done.get("modified") or done.get("deleted")):
        print(
            f"WARNING: {name}: v{done['pinned']} keeps the old content and is pinned on the hub",
            file=sys.stderr,
        )
    m = done.get("mass_removal")
    if m:
        print(
            f"WARNING: {name}: this snapshot removes {m['removed']} of the {m['previous_files']} files "
            f"of v{m['previous_version']} (more than max_removed = {m['limit']}); the new version is "
            f"written and v{m['previous_version']} keeps them. Is the volume mounted and healthy?",
            file=sys.stderr,
        )
    return bool(done.get("modified") or done.get("deleted") or m)


def _summary(done: dict[str, Any]) -> str:
    name = done["collection"]
    latest = done.get("latest") or {}
    sent = f"hashed {done['files_hashed']} file(s), sent {done['contents_sent']} content(s) the hub lacked"
    if done["unchanged"]:
        return f"{name}: unchanged since v{latest.get('number')} on the hub (by size and times); {sent}"
    stats = latest.get("stats", {})
    return (
        f"{name}: v{done['version']} on the hub: {stats.get('files', 0)} files, +{stats.get('added', 0)} "
        f"~{stats.get('changed', 0)} -{stats.get('removed', 0)}, {human_bytes(stats.get('bytes_added', 0))} "
        f"new; {sent}"
    )


def versions(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.cli.backup import print_listing
    from vaultfs.hub.client import Hub
    from vaultfs.hub.client import versions as hub_versions

    assert config.hub is not None
    if args.collection:
        config.collection(args.collection)
    with Hub(config.hub) as hub:
        docs = hub_versions(hub, args.collection)
    if args.json:
        emit_json(docs[0] if args.collection else {"collections": docs})
        return EXIT_OK
    for i, doc in enumerate(docs):
        print_listing(doc, i, single=bool(args.collection))
    if not docs and not args.collection:
        print(f"no versions on the hub {config.hub.url} yet (run `vaultfs snapshot`)")
    return EXIT_OK


def fetch(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.cli.restore import report_fetch
    from vaultfs.hub.client import Hub
    from vaultfs.hub.client import fetch as hub_fetch
    from vaultfs.progress import TerminalProgress

    assert config.hub is not None
    collection, number = parse_target(args.what)
    config.collection(collection)
    with (
        Hub(config.hub) as hub,
        TerminalProgress(f"restore {args.what}", enabled=None if not args.quiet else False) as prog,
    ):
        result = hub_fetch(hub, collection, number, args.paths, Path(args.to), prog, overwrite=args.overwrite)
    return report_fetch(args, collection, result)
