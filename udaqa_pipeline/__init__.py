"""udaqa-pipeline: uncertainty-driven action quality assessment on a frozen-I3D feature cache.

Data flow, one subpackage per step: ``config`` (the typed stage config) -> ``video`` (decode, clip
layout) -> ``backbone`` (I3D, weight formats) -> ``datasets`` (annotation adapters, scoring rules) ->
``features`` (the I3D input contract) -> ``cache`` (stage one) -> ``model`` (UD-AQA heads, sampler)
-> ``data`` (the training set) -> ``runs`` (run spec, checkpoint) -> ``inference`` (predictions, a
loaded run, scoring) -> ``engine`` (stage two's loop, fine-tuning) -> ``evaluation`` (metrics, report
files) -> ``experiments`` (demo, cv, ablation) -> ``cli`` (thin command line).

The library API, the functions the commands call with the same arguments::

    import udaqa_pipeline as u
    cfg = u.load_stage("demo")                                 # the resolved, typed stage config
    cache = u.extract_features("demo", cfg, "cache/demo-data")  # stage one -> cache directory
    run = u.train("demo", cache=cache, run_dir="runs/demo/fold0")  # stage two -> run directory
    ev = u.evaluate(run)                                       # metrics of the test fold, no files
    print(ev.metrics["overall"])                               # Spearman, R-l2, ...
    u.write_report(ev)                                         # <run>/eval/: metrics.json, Parquet, plots
    print(u.load_run(run).score("my_dive.mp4", difficulty=3.0)["final_score"])
"""

__version__ = "0.1.0"

# The API's functions, bound here as whisper and timm bind theirs (``udaqa_pipeline.train`` is
# :func:`udaqa_pipeline.engine.run.train`); ``load_stage`` is :func:`udaqa_pipeline.config.resolve`.
from .cache import open_cache  # noqa: E402
from .cache.extract import extract_features  # noqa: E402
from .inference.run import Run, load_run  # noqa: E402
from .config import resolve as load_stage  # noqa: E402
from .experiments.cv import cross_validate  # noqa: E402
from .evaluation.evaluate import Evaluation, evaluate  # noqa: E402
from .evaluation.report import write_report  # noqa: E402
from .engine.run import train  # noqa: E402

__all__ = ["__version__", "load_stage", "extract_features", "open_cache", "train", "evaluate", "Evaluation",
           "write_report", "cross_validate", "load_run", "Run"]
