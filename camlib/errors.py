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


class MethodError(CamlibError, ValueError):
    """An unknown method name, a method option it does not take, or a bad setting of a
    method or wrapper (``batch_size``, ``samples``, ``register``)."""


class MetricError(CamlibError, ValueError):
    """An unknown metric, a metric option it does not take, or a metric called without
    what it needs (boxes, masks, the model)."""


class VizError(CamlibError, ValueError):
    """An image, map, colormap or option that :mod:`camlib.viz` cannot use."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside camlib (the user's line)."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__))
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the caller of warn()
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        level += 1
        frame = frame.f_back
    warnings.warn(message, category, stacklevel=level)
