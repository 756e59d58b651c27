"""Temporary alias while the restructure lands: use ``kerastl.core.interrupt``."""

import sys

import kerastl.core.interrupt as _target

sys.modules[__name__] = _target
