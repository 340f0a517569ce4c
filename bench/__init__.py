"""Benchmarks (not tests): each module prints its figures and a one-line summary."""
