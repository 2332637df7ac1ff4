"""The vault's live index on the NAS, in LMDB (the only package that imports lmdb).

See `schema` for every database, key and value; `lmdb_catalog` (`Catalog`),
`writer` (`CatalogWriter`), `lookup` (`FileCacheLookup`) and `records` (the
rows and how damaged records are refused).
"""

from vaultfs.catalog.lmdb_catalog import Catalog
from vaultfs.catalog.lookup import FileCacheLookup
from vaultfs.catalog.records import DirMemo, FileCacheRow, ScrubRow, check_data_file
from vaultfs.catalog.writer import CatalogWriter

__all__ = [
    "Catalog",
    "CatalogWriter",
    "DirMemo",
    "FileCacheLookup",
    "FileCacheRow",
    "ScrubRow",
    "check_data_file",
]
