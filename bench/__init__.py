"""`make bench`: each module here measures one stage; run.py runs them all in one process."""
