"""Temporary alias while the restructure lands: use ``kerastl.core.model`` / ``kerastl.builder``."""

from kerastl.builder import load_model  # noqa: F401
from kerastl.core.model import *  # noqa: F401,F403
from kerastl.core.model import _strings_as_objects, plain  # noqa: F401
