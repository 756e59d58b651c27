"""Temporary alias while the restructure lands: use ``kerastl.builder``."""

import sys

import kerastl.builder as _target

sys.modules[__name__] = _target
