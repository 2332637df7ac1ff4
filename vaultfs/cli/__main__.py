"""``python -m vaultfs.cli``: the ``vaultfs`` command."""

import sys

from vaultfs.cli.main import main

sys.exit(main())
