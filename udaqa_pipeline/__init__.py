"""udaqa-pipeline: uncertainty-driven action quality assessment on a frozen-I3D feature cache.

Data flow, one subpackage per step: ``video`` (decode, clip layout, I3D input contract) ->
``backbone`` (I3D, weight formats) -> ``datasets`` (annotation adapters, scoring rules) ->
``cache`` (stage one: extraction into HDF5/Zarr) -> ``model`` (UD-AQA heads, losses) ->
``train`` / ``evaluate`` (stage two, metrics) -> ``cli`` (thin command line).
"""

__version__ = "0.1.0"
