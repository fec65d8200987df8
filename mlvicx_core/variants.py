"""The named method variants: VICReg, MLVICX and its ablations, each one set of config overrides.

Every experiment that compares methods (the results experiment, the notebook sweeps, the step-time
benchmark, the ``vicreg`` presets) takes its variants from :data:`VARIANTS`, so "VICReg" means the
same network everywhere. A variant only switches parts of the method on or off; sizes come from the
preset (``paper`` or ``teaching``). ``random`` (no pretraining) is a baseline, not a variant: see
``mlvicx_core.evaluation.baselines``.

Adding a variant is one entry here: a name and its ``{dotted key: value}`` overrides.
"""
from __future__ import annotations

from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    # the method: context bottlenecks + multi-level branch (whatever the preset says)
    "mlvicx": {},
    # the baseline: no multi-level branch, no context bottlenecks (METHOD.md section 2)
    "vicreg": {"model.multilevel": False, "model.context_bottleneck": False},
    # ablations
    "mlvicx-no-cb": {"model.context_bottleneck": False},
    "mlvicx-frozen": {"model.freeze_lateral": True},  # the released code's untrained 1x1 convs
}


def variant_overrides(name: str) -> dict[str, Any]:
    """The overrides of variant ``name`` (a clear error for an unknown name)."""
    from .config import ConfigError

    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}: expected one of {list(VARIANTS)}")
    return dict(VARIANTS[name])


def apply_variant(config, name: str):
    """``config`` with variant ``name`` switched on (a :class:`~mlvicx_core.config.Config`)."""
    from .config import apply_overrides

    return apply_overrides(config, variant_overrides(name))
