"""The seeds' own recipes, re-created as baselines for the benchmarks."""
