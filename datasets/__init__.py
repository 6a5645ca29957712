"""Dataset generators and loaders (installed as ``xaibench.datasets``). Every module in this package is
imported when the package is, so a new dataset file registers itself with no other edit."""

import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
