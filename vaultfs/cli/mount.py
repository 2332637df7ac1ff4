"""The ``mount`` and ``umount`` subcommands (registered by `vaultfs.cli`).

`vaultfs.mount` (pyfuse3, trio) is imported inside the commands, so every other
command works on a machine without libfuse.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vaultfs.cli.limits import add_limit_options
from vaultfs.errors import UsageError
from vaultfs.output import AddCommand

if TYPE_CHECKING:  # imported when a command runs (startup time)
    from vaultfs.config import Config

MOUNT_EXTRA = ("pyfuse3", "trio")  # what `pip install 'vaultfs[mount]'` adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], add: AddCommand) -> None:
    """Add this module's subcommands; `add(name, help, description)` makes a parser with --json."""
    sp = add(
        "mount",
        "mount every collection and version read-only",
        "Mount the vault read-only at MOUNTPOINT: /<collection>/v<N>/ for every version,\n"
        "/<collection>/latest -> the newest, /.vaultfs/status. Browsing is answered from the\n"
        "local catalog; file content is read from the bands and verified (a corrupt band\n"
        "gives EIO, never wrong bytes). New versions appear without remounting.\n\n"
        "Runs in the background and returns once the mount is up (logging to\n"
        "<state_dir>/mount.log, or --log FILE); --foreground stays attached and logs to\n"
        "stderr. Stop it with `vaultfs umount MOUNTPOINT`. See docs/mount.md.",
    )
    sp.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    sp.add_argument("--foreground", action="store_true", help="stay attached, log to stderr")
    sp.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users (and Samba) browse; permissions are still enforced",
    )
    sp.add_argument("--log", metavar="FILE", type=Path, help="log file in the background")
    add_limit_options(sp)
    sp.set_defaults(func=cmd_mount)

    sp = add(
        "umount",
        "unmount a vaultfs mount",
        "Unmount MOUNTPOINT (fusermount3 -u). Also clears a mount whose process died\n"
        '("Transport endpoint is not connected"). A busy mount is left alone, with the\n'
        "command that lists the programs using it.",
    )
    sp.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    sp.set_defaults(func=cmd_umount)


def cmd_mount(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.malloc import tune_for_large_buffers
    from vaultfs.vault import Vault

    try:
        from vaultfs.mount.lifecycle import MountOptions, mount
    except ModuleNotFoundError as e:
        if e.name not in MOUNT_EXTRA:
            raise
        raise UsageError(
            f"vaultfs mount needs {e.name}, which is not installed: install the mount extra "
            "(pip install 'vaultfs[mount]', with the system's fuse3 and libfuse3-dev; "
            "tools/setup does both)"
        ) from None

    tune_for_large_buffers()  # frames of MiBs, read and decompressed over and over
    opts = MountOptions(
        allow_other=args.allow_other,
        foreground=args.foreground,
        debug=args.debug,
        log_file=args.log.absolute() if args.log else None,
    )
    if args.foreground:
        import logging  # loaded by main already; not at import: the parser's modules stay light

        logging.getLogger("vaultfs.mount").setLevel(logging.DEBUG if args.debug else logging.INFO)
    Vault.open(config, readonly=True).close()  # a clear error now, before forking
    # Writable: the mount records restore requests, their progress and the band cache.
    code = mount(
        lambda: Vault.open(config),
        args.mountpoint.absolute(),
        opts,
        default_log=config.state_dir / "mount.log",
    )
    if not args.foreground and not args.quiet:
        print(f"mounted {config.store} at {args.mountpoint}")
    return code


def cmd_umount(args: argparse.Namespace, config: Config) -> int:
    from vaultfs.mount.mountpoint import unmount

    message = unmount(args.mountpoint.absolute())
    if not args.quiet:
        print(message)
    return 0
