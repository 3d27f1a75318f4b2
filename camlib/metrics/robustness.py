r"""Robustness: does the map stay put when the input barely changes?"""

from __future__ import annotations
