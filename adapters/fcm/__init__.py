"""Flow-cytometry family (``fcm.*``): the ReluFormer event-set transformer, event gradients,
polygon-query gradients, per-head attention, the zoo models and the report figures.

Every module of this package is imported with it (importing registers), so a new method
module needs no edit here.
"""

import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
