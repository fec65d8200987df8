"""The method contract: what a self-supervised method tells the kit (registry: ``METHODS``).

A method is one module in ``mlvicx_core/methods/`` that builds one :class:`Method`: its name (the
value of ``model.method``), the heads it trains, the names of its loss terms, the loss itself and
the weight each term enters the total with. The step calls the loss; the trainer, the training
figure and the results report read the heads and term names from here, so a method needs no edit
anywhere else (CONTRIBUTING.md, "Adding a method").
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The heads an MLVICX network can have, by name -> the field of ``model.Embeddings`` holding each:
#: ``global`` (pooled layer4 through the projector) and ``multi`` (the multi-level branch, built
#: when ``model.multilevel`` is true).
HEADS = {"global": "global_", "multi": "multi"}


def embedding(z: Any, head: str):
    """The ``head`` embedding (N, D) of one view's ``Embeddings`` (``None`` if the network has no
    such head)."""
    return getattr(z, HEADS[head])


@dataclass(frozen=True)
class Method:
    """A self-supervised method.

    - ``name``: its key in ``METHODS`` and the value of ``model.method``;
    - ``heads``: the embeddings it trains, a subset of :data:`HEADS` in order;
    - ``terms``: its unweighted terms per head (e.g. ``invariance``), logged as ``<head>/<term>``;
    - ``loss(za, zb, loss_config, gather)``: ``za``, ``zb`` the two views' ``Embeddings``,
      ``loss_config`` the ``loss.*`` section, ``gather`` None or the DistributedDataParallel gather
      (a rank's (n, D) -> the global (N, D), with gradient). Returns 0-dim float32 tensors:
      ``loss`` (the total that is minimised), ``<head>/loss`` and ``<head>/<term>`` for every head
      and term, i.e. exactly :meth:`names`. No finiteness check: the step checks every term;
    - ``weights(loss_config)``: ``{"<head>/<term>": w}``, the factor each term enters ``loss``
      with (``loss = sum w * term`` over heads and terms), for figures that weigh the terms;
    - ``summary``: one line for reports and ``--help``.
    """

    name: str
    heads: tuple[str, ...]
    terms: tuple[str, ...]
    loss: Callable[..., dict]
    weights: Callable[[Any], dict[str, float]]
    summary: str = ""

    def __post_init__(self) -> None:
        bad = [h for h in self.heads if h not in HEADS]
        if not self.heads or bad:
            raise ValueError(f"method {self.name!r}: heads {list(self.heads)}: expected a non-empty "
                             f"subset of {list(HEADS)}")
        if "loss" in self.terms:
            raise ValueError(f"method {self.name!r}: 'loss' is the total, not a term name")

    def names(self) -> list[str]:
        """Every name :attr:`loss` returns: ``loss``, then per head ``<head>/loss`` and its terms."""
        return ["loss"] + [f"{h}/{t}" for h in self.heads for t in ("loss", *self.terms)]

    def head_mismatch(self, multilevel: bool) -> str | None:
        """Why a network with (``multilevel=True``) or without the multi-level branch cannot train
        this method, naming the keys to change; None when it can."""
        if "multi" in self.heads and not multilevel:
            return (f"model.method={self.name!r} trains the multi-level branch: set "
                    "model.multilevel=true")
        if "multi" not in self.heads and multilevel:
            return (f"model.method={self.name!r} does not train the multi-level branch: set "
                    "model.multilevel=false (or a method that trains it, e.g. mlvicx)")
        return None
