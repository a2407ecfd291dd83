"""Stage two's evaluation of a trained run on its test fold: :mod:`.evaluate` computes the metrics
and predictions (pure: reads the run and its cache, writes nothing), :mod:`.report` writes them
(``metrics.json``, ``predictions.parquet``) and :mod:`.plots` draws the PNGs."""
