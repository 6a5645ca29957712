"""ViT family (``vit.*``): attention capture, raw attention, rollout, the Chefer rules and GradCAM on
tokens, the small timm ViTs of the zoo and their pretraining.

Every module of this package is imported with it (importing registers).
"""

import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
