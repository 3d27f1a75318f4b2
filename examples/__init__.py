"""Worked examples for camlib (run them as modules, e.g. ``python -m examples.mnist``)."""
