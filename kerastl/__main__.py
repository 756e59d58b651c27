"""``python -m kerastl``: the console script."""

import sys

from kerastl.cli.app import main

sys.exit(main())
