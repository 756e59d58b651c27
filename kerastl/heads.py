"""Temporary alias while the restructure lands: use ``kerastl.core.heads``."""

import sys

import kerastl.core.heads as _target

sys.modules[__name__] = _target
