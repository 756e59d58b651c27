"""Temporary alias while the restructure lands: use ``kerastl.core.safety``."""

import sys

import kerastl.core.safety as _target

sys.modules[__name__] = _target
