"""Drivers that run the pipeline end to end (the demo): they make the lookups (roots, run
directories) and call the stages' library functions."""
