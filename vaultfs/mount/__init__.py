"""The read-only FUSE mount of every version (the only package that imports pyfuse3 and trio).

* `view` — what a version looks like: the node table, lookup, directory listings
  and opening files, all from the catalog (no pyfuse3 here; it re-exports the names
  fuse_ops and the tests use from the five modules below);
* `attrs` — stat(2) and the extended attributes of the view's nodes (functions the
  view's `attr`, `xattr_names` and `xattr` call);
* `nodes` — the records the view answers with (`Node`, `Attr`) and stable inode numbers;
* `errors` — what the view refuses, one exception class per errno;
* `reads` — content of open files: verified ranged reads (`OpenFile`), the LRU of
  band readers, the read-ahead and hasher threads (`BandReaders`);
* `status` — the files under /.vaultfs/ (status, restores.json) and band states in words;
* `xdg` — band states as ``user.xdg.comment`` and ``user.xdg.tags``, for file managers;
* `askers` — who asked for a restore: the opener, the once-a-minute log of refused
  opens, the hooks' environment, the askers in the status outputs;
* `fuse_ops` — the pyfuse3 adapter: each handler asks the view and converts
  its answer (errno, entry attributes);
* `restore_policy` — which opens of an archived file may ask Deep Archive for
  its band (thumbnailer guards, daily budget), and the band cache;
* `lifecycle` — mounting, the daemon, the restore watcher, unmounting.
"""
