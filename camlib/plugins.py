"""Methods from other packages, found through the ``camlib.methods`` entry-point group.

A package adds a method to camlib by declaring, in its ``pyproject.toml``::

    [project.entry-points."camlib.methods"]
    mymethod = "mypackage.cams:MyCAM"

where ``MyCAM`` subclasses :class:`camlib.Explainer`. On the first look-up of a name
camlib does not know (:func:`camlib.get_method`, :func:`camlib.available_methods`,
``camlib explain --method``), every such entry point is loaded once per process and its
class registered under the entry point's name - the user never imports the plugin. A
plugin that fails to load gives a warning naming it and changes nothing else.
"""

from __future__ import annotations

import threading
import warnings
from importlib.metadata import EntryPoint, entry_points

GROUP = "camlib.methods"
"""The entry-point group camlib reads."""

_lock = threading.RLock()
_loaded = False


def load_plugins() -> None:
    """Load and register every ``camlib.methods`` entry point (once per process).

    An entry point whose object is an :class:`camlib.Explainer` subclass is registered
    under the entry point's name unless that name is taken (a built-in keeps its name; a
    clash is warned about). A class that registered itself on import (with
    ``@camlib.register``) keeps its own names and gains the entry point's as an alias.
    """
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        _loaded = True  # before loading: a plugin that looks methods up must not recurse
        for ep in _entry_points():
            _load_one(ep)


def _entry_points() -> list[EntryPoint]:
    eps = entry_points(group=GROUP)
    seen: dict[str, EntryPoint] = {}
    for ep in eps:  # one distribution visible twice on sys.path gives duplicates
        seen.setdefault(f"{ep.name}={ep.value}", ep)
    return sorted(seen.values(), key=lambda e: e.name)


def _load_one(ep: EntryPoint) -> None:
    from . import base  # lazily: base imports this module on first use

    where = f"camlib plugin {ep.name!r} ({ep.value})"
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - any failure in someone else's import
        warnings.warn(
            f"{where} could not be loaded and is skipped: {type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    if not (isinstance(obj, type) and issubclass(obj, base.Explainer)):
        warnings.warn(
            f"{where} is {obj!r}, not a camlib.Explainer subclass; it is skipped",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    current = base.METHODS.get(ep.name)
    if current is obj:
        return
    if current is not None:
        warnings.warn(
            f"{where}: the name {ep.name!r} is already taken by {current.__module__}."
            f"{current.__qualname__}; the plugin is not registered under it",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    if obj in base.METHODS.values():  # registered itself on import: add an alias only
        dict.__setitem__(base.METHODS, base._key(ep.name), obj)
    else:
        base.register(ep.name)(obj)


def _reset() -> None:
    """Forget that plugins were loaded (tests only; registered methods stay)."""
    global _loaded
    with _lock:
        _loaded = False
