"""Frozen video backbone: DeepMind's Kinetics-400 I3D.

``i3d`` is the model (no I/O), ``weights`` fetches/converts/verifies/loads the weights, ``labels`` the
class names, ``classify`` the user-facing sanity check.
"""

from .i3d import I3D, bf16_supported, same_padding
from .labels import KINETICS400
from .weights import WeightsError, fetch_weights, load_i3d, weights_path, weights_sha256

__all__ = ["I3D", "bf16_supported", "KINETICS400", "WeightsError", "fetch_weights", "load_i3d", "same_padding", "weights_path",
           "weights_sha256"]  # fmt: skip
