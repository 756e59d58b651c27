"""``python -m kerastl.cli``: the console script."""

import sys

from kerastl.cli.app import main

sys.exit(main())
