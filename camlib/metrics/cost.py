r"""Cost: what a map costs to compute, measured by the runner."""

from __future__ import annotations
