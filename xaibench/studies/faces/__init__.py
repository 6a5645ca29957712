"""The facial-CNN study (``face_study``): patient-, class- and similarity maps, composite faces,
the shortcut and class-imbalance analyses, and their report figures."""

from xaibench.util import import_submodules

import_submodules(__name__)
