"""Benchmarks and the accuracy evaluation: run by make bench and make eval, never by the tests."""
