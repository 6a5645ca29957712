"""CNN family: CAM, gradient and perturbation methods and the CNN models of the zoo (``cnn.*``).

Every module of this package is imported with it (importing registers), so a new method
module needs no edit here.
"""

from xaibench.util import import_submodules

import_submodules(__name__)
