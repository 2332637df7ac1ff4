"""The vault's live index on the NAS, in LMDB (the only package that imports lmdb).

See `schema` for every database, key and value.
"""

from vaultfs.catalog.lmdb_catalog import (
    Catalog,
    CatalogWriter,
    DirMemo,
    FileCacheLookup,
    FileCacheRow,
    check_data_file,
)

__all__ = ["Catalog", "CatalogWriter", "DirMemo", "FileCacheLookup", "FileCacheRow", "check_data_file"]
