"""Flow-cytometry family (``fcm.*``): the ReluFormer event-set transformer, event gradients,
polygon-query gradients, per-head attention, the zoo models and the report figures.

Every module of this package is imported with it (importing registers), so a new method
module needs no edit here.
"""

from xaibench.util import import_submodules

import_submodules(__name__)
