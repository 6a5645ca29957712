"""Metric modules (installed as ``xaibench.metrics``). Every module in this package is
imported when the package is, so a new metric file registers itself with no other edit."""

from xaibench.util import import_submodules

import_submodules(__name__)
