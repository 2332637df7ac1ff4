"""The read-only FUSE mount of every version (the only package that imports pyfuse3 and trio).

* `view` — what a version looks like: inodes, attributes, directory listings,
  open files and verified reads, all from the catalog (no pyfuse3 here);
* `fuse_ops` — the pyfuse3 adapter: each handler asks the view and converts
  its answer (errno, entry attributes);
* `restore_policy` — which opens of an archived file may ask Deep Archive for
  its band (thumbnailer guards, daily budget), and the band cache;
* `lifecycle` — mounting, the daemon, the restore watcher, unmounting.
"""
