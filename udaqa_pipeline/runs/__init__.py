"""A run on disk: its directory layout and :class:`~udaqa_pipeline.runs.layout.RunSpec` (``layout``),
and its one checkpoint file and the loaded run (``checkpoint``)."""
