"""Benchmarks: each prints a table (`make bench`); speed targets are checked here, never in tests."""
