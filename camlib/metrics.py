"""Metrics for explanations (filled in by the MNIST issue)."""
