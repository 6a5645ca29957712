"""Dataset generators and loaders (installed as ``xaibench.datasets``). Every module in this package is
imported when the package is, so a new dataset file registers itself with no other edit."""

from xaibench.util import import_submodules

import_submodules(__name__)
