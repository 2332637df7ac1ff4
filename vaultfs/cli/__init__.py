"""The ``vaultfs`` command: where every command line is parsed.

`main` (argparse, config lookup, output, exit codes) and one module per command
group: `index` (``index rebuild``, ``check``), `mount`, `restore` (Deep Archive
restores and ``restore fetch``), `retention` (``forget``, ``prune``). The only
package that reads environment variables.
"""

from vaultfs.cli.main import main

__all__ = ["main"]
