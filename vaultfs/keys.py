"""Band ids and object keys: where everything lives in a store, and in the spool and cache.

Band ids become object keys and local file names, so this is also where an id read from
outside (the store, an index object, a sidecar, a band's catalog, the LMDB) is checked
before it is used (`parse_band_id`). `vaultfs.model` re-exports every name here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NewType

from vaultfs.errors import CorruptionError

BandId = NewType("BandId", str)  # "20261126T103000Z-1a2b3c4d", sorts by time

# The one syntax of a band id: what `band.new_band_id` generates (UTC time, 8 hex digits).
# Band ids become object keys and local file names (spool, cache), so an id read from
# the store, an index object, a sidecar, a band's catalog or the LMDB is checked against
# this before it is used: anything else ("../x", "a/b", "") is damage, never a path.
BAND_ID_SYNTAX = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")


class BadBandId(CorruptionError, ValueError):
    """A band id that vaultfs cannot have written. A ValueError too, so every place that
    treats a malformed record as damage (``except ValueError``) treats this one so."""


def parse_band_id(text: object, where: str) -> BandId:
    """`text` as a BandId; BadBandId (naming `where` it came from) unless it has the syntax
    of `BAND_ID_SYNTAX` exactly."""
    if isinstance(text, str) and BAND_ID_SYNTAX.fullmatch(text):
        return BandId(text)
    shown = repr(text)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise BadBandId(f"{where}: {shown} is not a vaultfs band id (damaged or foreign data, not used)")


def band_file(directory: Path, band: str, suffix: str = ".tar.zst") -> Path:
    """The local file of `band` in `directory` (spool, cache): the id is checked again
    here, where it becomes a path, so no id can name a file outside `directory`."""
    return directory / (parse_band_id(band, "band id for a local file") + suffix)


def band_key(band: str) -> str:
    return f"bands/{band}.tar.zst"


def sidecar_key(band: str) -> str:
    return f"bands/{band}.catalog.zst"


def preview_key(band: str) -> str:
    """The band's preview object (docs/band-format.md, "Preview objects"): stays STANDARD."""
    return f"bands/{band}.preview"


def version_key(collection: str, number: int) -> str:
    return f"versions/{collection}/{number}.json"


VAULT_KEY = "vault.json"
