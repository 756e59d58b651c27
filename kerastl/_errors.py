"""Temporary alias while the restructure lands: use ``kerastl.errors``."""

import sys

import kerastl.errors as _target

sys.modules[__name__] = _target
