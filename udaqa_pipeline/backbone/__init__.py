"""Frozen video backbone: DeepMind's Kinetics-400 I3D (model in ``i3d``, weight files in ``weights``)."""

from .i3d import I3D, same_padding
from .labels import KINETICS400

__all__ = ["I3D", "KINETICS400", "same_padding"]
