"""The method registry: every self-supervised method the kit trains, one module and one line each.

``model.method`` names an entry of :data:`METHODS`; the step calls its loss, and the trainer, the
training figure and the results report ask it for its heads and term names
(:class:`~.base.Method`). Built in: ``vicreg`` (the baseline), ``mlvicx`` (the paper's method) and
``barlow_twins`` (another SSL method to compare against). A method module imports only the loss
functions and :mod:`.base`: nothing of the configuration, the model or the trainer.

Adding a method: write ``mlvicx_core/methods/<name>.py`` building a :class:`~.base.Method` (its
terms as pure functions, its loss, its term weights) and add it to :data:`METHODS` below; a method
defined elsewhere (a test, a notebook) is registered with :func:`register_method`.
"""
from __future__ import annotations

from . import barlow_twins, mlvicx, vicreg
from .base import HEADS, Method, embedding

METHODS: dict[str, Method] = {m.name: m for m in (vicreg.METHOD, mlvicx.METHOD,
                                                  barlow_twins.METHOD)}


def register_method(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (a name already taken is an error)."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name`` (an error lists the registered ones)."""
    if name not in METHODS:
        raise ValueError(f"model.method={name!r}: expected one of {sorted(METHODS)} "
                       "(mlvicx_core/methods)")
    return METHODS[name]


__all__ = ["HEADS", "METHODS", "Method", "embedding", "get_method", "register_method"]
