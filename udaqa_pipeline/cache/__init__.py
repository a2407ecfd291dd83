"""Stage one's feature cache: extraction (I3D over clip batches), HDF5/Zarr stores, manifest,
lock, verify, merge, and the plan that keeps labels out of the features (a label fix rewrites the
label table, adding a video extracts only it). Stage two only reads it through :func:`open_cache` /
:func:`find_cache`."""

from .manifest import SCHEMA_VERSION, CacheError
from .store import (
    SAMPLE_SCHEMA,
    FeatureCache,
    add_backend,
    find_cache,
    open_cache,
    samples_table,
    write_cache,
)

__all__ = [
    "SCHEMA_VERSION", "SAMPLE_SCHEMA", "CacheError", "FeatureCache", "add_backend", "find_cache",
    "open_cache", "samples_table", "write_cache",
]
