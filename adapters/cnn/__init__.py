"""CNN family: CAM, gradient and perturbation methods and the CNN models of the zoo (``cnn.*``).

Every module of this package is imported with it (importing registers), so a new method
module needs no edit here.
"""

import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
