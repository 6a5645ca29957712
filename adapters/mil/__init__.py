"""Multiple-instance-learning family (``mil.*``): ABMIL, CLAM-SB/MB, cell-type-aware attention and
GraphMIL over bags of segmented cells; per-cell attention heatmaps with their normalisations and
GraphMIL aggregations; GeoJSON / interactive-graph outputs; SHAP of the attention module.

Every module of this package is imported with it (importing registers), so a new method
module needs no edit here.
"""

from xaibench.util import import_submodules

import_submodules(__name__)
