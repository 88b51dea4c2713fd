"""Benchmarks: netrecall side by side with the reference tool, in one run, as ratios (`make bench`)."""
