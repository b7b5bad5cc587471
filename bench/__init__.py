"""Benchmarks: `make bench` (or `python -m bench`) prints one table, every row measured in the same run."""
