"""The MIL study (``mil_study``): attention maps over slides and SHAP of the attention module
(also of the FCM ReluFormer's heads), as report figures."""

from xaibench.util import import_submodules

import_submodules(__name__)
