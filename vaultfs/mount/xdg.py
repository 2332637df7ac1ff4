"""A file's band state where file managers look: ``user.xdg.comment`` and ``user.xdg.tags``.

The freedesktop.org conventions for extended attributes (Dolphin shows both in its
information panel and Baloo indexes them; ``getfattr`` shows them anywhere):

* ``user.xdg.tags`` — ``archived``, ``restoring``, ``restored`` or ``cached``;
* ``user.xdg.comment`` — the same in a sentence that says what to do and when to come
  back: "archived in Deep Archive — copying requests a restore, ready within 48 h".

Only files whose band is in Deep Archive or came back from it have them: a file of a
band in S3 Standard (or a ``file://`` store, or empty) has nothing to say and answers
"No data available", as do files whose source had its own ``user.xdg.*`` attributes
(those are shown as snapshotted: `vaultfs.mount.attrs.xattr` answers them first).
Plain functions over a `BandInfo`, called by `vaultfs.mount.attrs`; the wording of
states is `vaultfs.mount.status.state_text`'s, in sentences.
"""

from __future__ import annotations

import time

from vaultfs.config import Config
from vaultfs.model import BandInfo

COMMENT = b"user.xdg.comment"
TAGS = b"user.xdg.tags"
NAMES = (COMMENT, TAGS)
TAGGED_STATES = ("archived", "restoring", "restored", "cached")


def names(band: BandInfo | None) -> list[bytes]:
    """Our ``user.xdg.*`` names for a file in `band` (None: empty content, no band)."""
    return list(NAMES) if band is not None and band.state in TAGGED_STATES else []


def value(band: BandInfo | None, name: bytes, config: Config) -> bytes | None:
    """The value of `name` for a file in `band`; None when it has none."""
    if band is None or band.state not in TAGGED_STATES:
        return None
    if name == TAGS:
        return band.state.encode()
    if name == COMMENT:
        return comment(band, config).encode()
    return None


def comment(band: BandInfo, config: Config) -> str:
    r = band.restore
    if band.state == "archived":
        tier = config.s3.restore_tier
        if not config.mount.auto_restore:
            return "archived in Deep Archive — not readable until restored (`vaultfs restore start`)"
        return (
            "archived in Deep Archive — copying requests a restore, ready within "
            f"{config.prices.hours(tier)} h ({tier})"
        )
    if band.state == "restoring":
        ready = f", ready by {_minute(r.expected_ns)}" if r and r.expected_ns else ""
        return f"restoring from Deep Archive{ready} — copying fails until then"
    if band.state == "restored":
        until = f" until {_minute(r.expires_ns)}" if r and r.expires_ns else ""
        return f"restored from Deep Archive, readable{until}"
    return "restored from Deep Archive, kept on this NAS (cached)"


def _minute(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ns / 1e9))
