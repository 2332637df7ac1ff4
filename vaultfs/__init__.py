"""vaultfs: versioned backups of a NAS to S3 / Glacier Deep Archive, browsable with FUSE.

The package is layered; dependencies point down (see docs/architecture.md):
cli → mount → fuse_ops → vfs → snapshot/restore → vault → catalog/store/band → config/model → errors.
"""

__version__ = "0.1.0"
