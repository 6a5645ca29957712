"""CNN family: CAM methods and the CNN models of the zoo (registered as ``cnn.*``)."""

from . import cam, models, fixture  # noqa: F401  (importing registers)
