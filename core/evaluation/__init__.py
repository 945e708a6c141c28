"""Evaluation: pilots, benchmarks, report data and projections built on the engine."""
