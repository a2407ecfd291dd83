"""udaqa-pipeline: uncertainty-driven action quality assessment on a frozen-I3D feature cache.

Data flow, one subpackage per step: ``video`` (decode, clip layout, I3D input contract) ->
``backbone`` (I3D, weight formats) -> ``datasets`` (annotation adapters, scoring rules) ->
``cache`` (stage one: extraction into HDF5/Zarr) -> ``model`` (UD-AQA heads, losses) ->
``train`` / ``evaluate`` (stage two, metrics) -> ``cli`` (thin command line).

The library API, the functions the commands call with the same arguments::

    import udaqa_pipeline as u
    cache = u.extract_features("demo", "cache/demo-data")     # stage one -> cache directory
    run = u.train("demo", cache=cache, run_dir="runs/demo/fold0")  # stage two -> run directory
    print(u.evaluate(run)["overall"])                         # Spearman, R-l2, ... on the test fold
    print(u.load_run(run).score("my_dive.mp4", difficulty=3.0)["final_score"])
"""

__version__ = "0.1.0"

# The API's functions, bound here as whisper and timm bind theirs: ``udaqa_pipeline.train`` is
# :func:`udaqa_pipeline.engine.run.train`; ``udaqa_pipeline.evaluate`` is the function (its module stays
# importable by name through ``importlib.import_module``).
from .cache import open_cache  # noqa: E402
from .cache.extract import extract_features  # noqa: E402
from .runs.checkpoint import Run, load_run  # noqa: E402
from .config import resolve as load_stage  # noqa: E402  (the resolved, typed stage config)
from .cv import cross_validate  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .engine.run import train  # noqa: E402

__all__ = ["__version__", "load_stage", "extract_features", "open_cache", "train", "evaluate", "cross_validate",
           "load_run", "Run"]
