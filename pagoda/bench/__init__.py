"""Benchmarks: `pagoda bench <name>`, one module per benchmark (see pagoda/cli/bench.py)."""
