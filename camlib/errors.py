"""Exceptions raised by camlib.

Every error camlib raises on bad input is a :class:`CamlibError`, and also a
``ValueError`` or ``TypeError`` so ordinary ``except`` clauses keep working.
"""

from __future__ import annotations


class CamlibError(Exception):
    """Base class of every error camlib raises on purpose."""


class LayerError(CamlibError, ValueError):
    """The target layer (or classifier layer) cannot be found or used."""


class TargetError(CamlibError, ValueError):
    """The requested targets do not fit the model output or the batch."""


class InputError(CamlibError, TypeError):
    """The inputs are not a batch the explainer can use."""
