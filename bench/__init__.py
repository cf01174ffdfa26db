"""Benchmarks: speed and quality per unit of compute, printed as ratios measured in one run."""
