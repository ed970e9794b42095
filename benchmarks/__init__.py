"""Benchmarks behind scripts/benchmark.py: timing helpers and one module per subject."""
