"""User-facing errors.

A `VaultError` is something the user can act on: it carries a one-line message
that says what to do and the exit status the command line returns for it.
Anything else that escapes is a bug and shows its traceback.

Exit statuses (a contract; docs/cli.md has the table for every command):
  0 success; 1 error (nothing committed by the failing step);
  2 usage or configuration error: the command line names something that does
  not exist or is malformed, the configuration is invalid, or the store
  refuses us as configured (endpoint, bucket, credentials, permissions);
  3 finished, but files were skipped or missing, or cold data changed;
  4 bit rot found: a source file has the size and mtime of its version but other
  bytes (``scrub``, a snapshot's scrub slice). Not 3: 3 is often an intended edit
  and schedules count it as success; rot must fail the run (docs/schedules.md).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3
EXIT_BITROT = 4  # outweighs 3, outweighed by 1 (a run that failed)
EXIT_READER_GONE = 141  # 128 + SIGPIPE: the reader of our output closed the pipe


class VaultError(Exception):
    """An error the user can fix; printed as one line, no traceback."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(VaultError):
    """The configuration is missing or invalid; the message names the key."""

    exit_code = EXIT_USAGE


class UsageError(VaultError):
    """The command line names something that does not exist: a collection's
    version (``photos@v99``), a path inside a version, a mount point.

    Exit 2 like an unknown collection (a ConfigError): in both the user asked
    for something that is not there, and nothing was attempted.
    """

    exit_code = EXIT_USAGE


class StoreSetupError(VaultError):
    """The store cannot be used as configured (endpoint, bucket, credentials, foreign vault)."""

    exit_code = EXIT_USAGE


class CorruptionError(VaultError):
    """Stored bytes failed verification (checksum, SHA-256, structure).

    Never serve data past one of these: in the mount it becomes EIO.
    """


class LockedError(VaultError):
    """Another process holds the vault's lock."""


class SourceRefused(VaultError):
    """A collection's root cannot be trusted to be its data (missing, unreadable, empty).

    Only that collection is left out: ``vaultfs snapshot`` goes on with the others
    and exits 1, since this collection got no version.
    """
