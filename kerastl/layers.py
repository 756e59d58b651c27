"""Temporary alias while the restructure lands: use ``kerastl.core.layers``."""

import sys

import kerastl.core.layers as _target

sys.modules[__name__] = _target
