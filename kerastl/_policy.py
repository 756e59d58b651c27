"""Temporary alias while the restructure lands: use ``kerastl.core.policy``."""

import sys

import kerastl.core.policy as _target

sys.modules[__name__] = _target
