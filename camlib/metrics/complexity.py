r"""Complexity: how concentrated is the map?"""

from __future__ import annotations
