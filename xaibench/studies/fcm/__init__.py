"""The flow-cytometry study (``fcm_study``): projections with attended events, gradient arrows and
gate polygons; per-head top-5% cancer fractions (the FCM paper's figure 5 layout)."""

from xaibench.util import import_submodules

import_submodules(__name__)
