"""ViT family (``vit.*``): attention capture, raw attention, rollout, the Chefer rules and GradCAM on
tokens, the small timm ViTs of the zoo and their pretraining.

Every module of this package is imported with it (importing registers).
"""

from xaibench.util import import_submodules

import_submodules(__name__)
