"""The demo (``make demo`` = ``mlvicx demo``): pretrain the teaching recipe, then tell the truth.

1. :func:`~mlvicx_core.train.trainer.train_or_load` the ``teaching`` preset on the synthetic radiographs
   (a finished run with the same configuration is reused), with the online probe on;
2. score the frozen trunk and the *same network at random init* on radiographs of patients never
   pretrained on, with the kit's one evaluation pipeline: the linear probe on pooled layer4 and on
   pooled layer3 + layer4, and kNN on pooled layer4, each with its 95 % bootstrap CI and the
   **paired** difference (pretrained minus random init, resampling the same test images for both)
   with its CI; where the network is not ResNet-18 at width 64, that network at random init too, as
   the absolute reference;
3. read out the factors each radiograph was drawn with (``evaluation.factors``: position, zoom,
   view, dose, marker, anatomy...) with the same linear probe, random init against pretrained:
   what self-supervision kept and what it dropped;
4. write ``training.png`` (the loss terms, the online probe with its intervals and the held-out
   result beside it), ``probe.png`` and ``heldout/results.csv``, and print where they are.

:func:`run_demo` returns a :class:`DemoReport`; :func:`report_text` is what the command prints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The held-out read-outs the demo prints: (label, task, eval.features).
READOUTS = (("linear probe, pooled layer4", "probe", "trunk"),
            ("linear probe, layer3+layer4", "probe", "layer3+layer4"),
            ("kNN, pooled layer4", "knn", "trunk"))


@dataclass
class Comparison:
    """One read-out of both encoders: (value, ci_low, ci_high) each, and the paired difference."""

    label: str
    random: tuple[float, float, float]
    pretrained: tuple[float, float, float]
    difference: tuple[float, float, float]
    reference: tuple[float, float, float] | None = None  # ResNet-18 width 64 at random init


@dataclass
class DemoReport:
    run_dir: Path
    steps: int
    trained_seconds: float | None  # None: a finished run was reused
    final_loss: float | None
    header: str
    comparisons: list[Comparison]
    factors: list[tuple[str, float, float]]  # (factor, random-init AUROC, pretrained AUROC)
    online: tuple[float, float, float] | None  # last online read-out (value, lo, hi)
    n_test: int
    n_findings: int
    eval_seconds: float
    files: dict[str, Path] = field(default_factory=dict)


def _header(c) -> str:
    steps = c.train.max_steps or (c.train.epochs * (c.data.length // c.train.batch_size)
                                  if c.data.length else "all")
    stored = f" views of {c.data.stored_size} px radiographs" if c.data.stored_size else ""
    net = f"ResNet-18 width {c.model.width}" + (f", {c.model.stem} stem"
                                                 if c.model.stem != "imagenet" else "")
    return (f"MLVICX demo: teaching preset ({net}; {c.data.view_size} px{stored}; "
            f"{c.data.length} {c.data.dataset} radiographs; {steps} steps of batch "
            f"{c.train.batch_size}, {c.optim.name}; online probe every "
            f"{c.train.eval_every or '-'} steps)")


def run_demo(config, log=print) -> DemoReport:
    """Train (or reuse) the run ``config`` describes and evaluate it (module docstring)."""
    from ..data.registry import evaluation_splits
    from ..evaluation.baselines import reference_encoder
    from ..evaluation.metrics import paired_auroc_difference
    from ..evaluation.pipeline import evaluate, mean_auroc
    from ..evaluation.report import write_results
    from ..train.metrics_log import read_metrics
    from ..train.trainer import train_or_load
    from ..viz.training import plot_probe_comparison, plot_training

    c = config
    header = _header(c)
    log(header)
    start = time.perf_counter()
    result = train_or_load(c)  # only a run of this very code is reused (train/fingerprint.py)
    reused = not result.losses  # no step taken in this call
    took = None if reused else time.perf_counter() - start
    log("reused the finished run" if reused else f"trained {result.step} steps in {took:.0f} s")

    t0 = time.perf_counter()
    splits = evaluation_splits(c.data, c.eval.split_sizes, in_memory=True)
    encoders = {"random init": reference_encoder("random", c.model, seed=c.train.seed),
                "pretrained": result.model}
    if c.model.width != 64 or c.model.stem != "imagenet":
        encoders["ResNet-18 w64, random init"] = reference_encoder(
            "random", c.model.replace(width=64, stem="imagenet"), seed=c.train.seed)
    rows, comparisons = [], []
    factor_rows = []
    for label, task, features in READOUTS:
        tasks = (task, "factors") if (task, features) == ("probe", "trunk") else (task,)
        ecfg = c.eval.replace(tasks=tasks, fractions=(1.0,), features=features)
        scores: dict[str, np.ndarray] = {}

        def keep(ev, task=task):
            scores["labels"], scores[ev.name] = ev.test_scores[(task, 1.0)]

        got = evaluate(encoders, splits, ecfg, dataset=c.data.dataset, on_encoder=keep)
        if not comparisons:
            first_rows = [r for r in got if r["task"] == task]
        for r in got:
            r["note"] = f"{features}; {r['note'] or ''}".rstrip("; ")
        rows += got
        factor_rows += [r for r in got if r["task"] == "factors"]
        diff = paired_auroc_difference(scores["labels"], scores["pretrained"],
                                       scores["random init"], n_boot=c.eval.n_boot,
                                       seed=c.eval.seed)
        ref = (mean_auroc(got, "ResNet-18 w64, random init", task=task)
               if "ResNet-18 w64, random init" in encoders else None)
        comparisons.append(Comparison(label, mean_auroc(got, "random init", task=task),
                                      mean_auroc(got, "pretrained", task=task), diff, ref))
    factors = []
    for name in dict.fromkeys(r["finding"] for r in factor_rows if r["metric"] == "auroc"):
        v = {r["encoder"]: r["value"] for r in factor_rows if r["finding"] == name}
        factors.append((name, float(v["random init"]), float(v["pretrained"])))
    out = result.run_dir / "heldout"
    csv, _ = write_results(rows, out)
    files = {"figure": None, "probe": plot_probe_comparison(
                 first_rows, result.run_dir / "probe.png",
                 title=f"held-out {READOUTS[0][0]}"),
             "results": csv, "metrics": result.metrics, "checkpoint": result.checkpoint,
             "trunk": result.trunk}
    first = comparisons[0]
    files["figure"] = plot_training(result.run_dir, held_out={
        "random init": first.random, "pretrained": first.pretrained})
    df = read_metrics(result.run_dir)
    online = None
    if "probe/linear/mean" in df:
        last = df.dropna(subset=["probe/linear/mean"]).iloc[-1]
        online = (float(last["probe/linear/mean"]), float(last.get("probe/linear/mean_lo", np.nan)),
                  float(last.get("probe/linear/mean_hi", np.nan)))
    return DemoReport(run_dir=result.run_dir, steps=result.step, trained_seconds=took,
                      final_loss=result.losses[-1] if result.losses else None, header=header,
                      comparisons=comparisons, factors=factors, online=online,
                      n_test=len(splits["test"]), n_findings=len(splits["test"].findings),
                      eval_seconds=time.perf_counter() - t0, files=files)


def _ci(v: tuple[float, float, float], sign: bool = False) -> str:
    f = "+.3f" if sign else ".3f"
    return f"{v[0]:{f}} [{v[1]:{f}}, {v[2]:{f}}]"


def report_text(r: DemoReport) -> str:
    """What ``mlvicx demo`` prints after training (every number is in ``heldout/results.csv``)."""
    lines = [f"\nHeld-out evaluation of the frozen trunk: {r.n_test} test radiographs of patients "
             f"never pretrained on, mean AUROC over {r.n_findings} findings, 95 % bootstrap CIs; "
             f"difference = pretrained - random init, paired over the same images "
             f"({r.eval_seconds:.0f} s):",
             f"  {'read-out':<28} {'random init':<22} {'pretrained':<22} difference"]
    for cmp in r.comparisons:
        lines.append(f"  {cmp.label:<28} {_ci(cmp.random):<22} {_ci(cmp.pretrained):<22} "
                     f"{_ci(cmp.difference, sign=True)}")
    ref = r.comparisons[0].reference
    if ref is not None:
        lines.append(f"  (absolute reference: ResNet-18 at width 64, random init, "
                     f"{r.comparisons[0].label}: {_ci(ref)})")
    first = r.comparisons[0]
    lo, hi = first.difference[1:]
    verdict = ("above random init: the whole 95 % interval of the difference is above zero"
               if lo > 0 else "below random init: the whole interval is below zero" if hi < 0
               else "not distinguishable from random init at this budget (the interval "
                    "includes zero)")
    lines.append(f"Verdict ({first.label}): the pretrained trunk is {verdict}.")
    if r.online is not None:
        v, olo, ohi = r.online
        inside = first.pretrained[1] <= v <= first.pretrained[2]
        lines.append(f"Online probe at step {r.steps}: {v:.3f} [{olo:.3f}, {ohi:.3f}] "
                     f"({'inside' if inside else 'outside'} the held-out interval "
                     f"[{first.pretrained[1]:.3f}, {first.pretrained[2]:.3f}])")
    if r.factors:
        lines += ["", "What the trunk encodes besides the findings: the factors each radiograph was "
                      "drawn with, read out by the same linear probe (pooled layer4; test AUROC, "
                      "0.5 = chance; numeric factors split at their training median):",
                  f"  {'factor':<16} {'random init':>11} {'pretrained':>11}  change"]
        for name, rnd, pre in sorted(r.factors, key=lambda f: f[2] - f[1]):
            lines.append(f"  {name:<16} {rnd:>11.3f} {pre:>11.3f}  {pre - rnd:+.3f}")
    lines.append(f"\nResults are in {r.run_dir}/:")
    notes = {"figure": "(loss terms, the online probe with intervals, the held-out result)",
             "probe": "(per-finding held-out AUROC, random init vs pretrained)",
             "results": "(every held-out number above)", "metrics": "", "checkpoint": "",
             "trunk": "(torchvision-layout ResNet-18 state dict)"}
    for key, path in r.files.items():
        lines.append(f"  {key:<11} {path}  {notes[key]}".rstrip())
    return "\n".join(lines)
