"""`make bench`: load tests of the metered call (see bench/run.py)."""
