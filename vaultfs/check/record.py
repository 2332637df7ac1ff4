"""Recording what `vaultfs check` found lost, under the vault lock, after the checks."""

from __future__ import annotations

from vaultfs import heal
from vaultfs.check.report import CheckReport
from vaultfs.config import Config
from vaultfs.errors import LockedError, VaultError
from vaultfs.vault import Vault


def record(config: Config, report: CheckReport) -> str:
    """Record what `check` found lost (missing bands, damaged blobs) in the catalog, under the
    vault lock; the check itself ran on a read-only catalog, which is closed by now. Returns
    a note saying what was recorded, or why not."""
    if not report.missing_bands and not report.damaged_blobs:
        return ""
    try:
        vault = Vault.open(config)
    except VaultError as e:
        return f"what was found lost is not recorded: {e.message}"
    try:
        with vault.lock():
            missing = heal.record_missing_bands(vault, report.missing_bands)
            damaged = heal.record_damaged_blobs(vault, report.damaged_blobs)
    except LockedError:
        return (
            "what was found lost is not recorded (another vaultfs process holds the lock): "
            "the next snapshot finds missing bands itself; run `vaultfs check --read-data` "
            "again for damaged ones"
        )
    finally:
        vault.close()
    blobs = sum(m.blobs for m in missing) + damaged
    if not blobs:
        return ""
    return (
        f"recorded {blobs} lost blob(s) in the local catalog: the next snapshot stores "
        "again those their sources still hold"
    )
