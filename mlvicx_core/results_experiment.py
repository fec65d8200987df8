"""Command line of the results experiment (logic in ``mlvicx_core.experiments``).

    OMP_WAIT_POLICY=PASSIVE python -m mlvicx_core.results_experiment --scale 1.0 \
        --out runs/results --report docs

pretrains and evaluates random init, VICReg, MLVICX and two ablations on the phantom, the real NIH
images and PneumoniaMNIST (3 seeds), then writes ``docs/RESULTS.md``, ``docs/figures/results_*.png``
and ``docs/results/*.csv``. Finished pretraining runs under ``--out`` are reused, so a rerun (or a
run resumed after an interruption) only redoes what is missing. ``--report-only`` rewrites the
report from ``--out`` without training. ``--smoke`` is the tiny version the test suite runs.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

from .experiments.results import DATASETS, METHODS, ExperimentSettings, run_experiment
from .experiments.results_report import write_report

#: ``--smoke``: the tiny budget the test suite runs (same code, narrow heads, 16 images a split).
SMOKE = {
    "steps": 2, "batch": 8, "seeds": (0,), "min_patients": 1, "n_boot": 10, "gradcam_images": 2,
    "figure_images": 2, "synthetic_sizes": {"train": 16, "val": 12, "test": 16},
    "nih_max_images": 16, "pneumonia_train": 16, "pneumonia_eval": 16,
    "model_overrides": {"model.projector": [128, 128], "model.ml_projector": [128, 128],
                        "model.fusion_channels": 32},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlvicx_core.results_experiment",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply pretraining steps and synthetic/PneumoniaMNIST sizes (default 1)")
    p.add_argument("--out", default="runs/results", help="runs, feature cache and raw CSVs")
    p.add_argument("--report", default="docs",
                   help="where RESULTS.md, figures/ and results/ are written (default docs)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=None)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny budget (2 steps of 8, 1 seed, 16 images per split, narrow heads); out/report default to a "
                        "temporary folder")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from the CSVs already in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("note: set OMP_WAIT_POLICY=PASSIVE before starting Python on a shared CPU "
              "(spinning OpenMP threads can make each step several times slower)")
    kw = dict(SMOKE) if args.smoke else {}
    if args.seeds:
        kw["seeds"] = tuple(args.seeds)
    if args.datasets:
        kw["datasets"] = tuple(args.datasets)
    if args.methods:
        kw["methods"] = tuple(args.methods)
    settings = ExperimentSettings(scale=args.scale, threads=args.threads, **kw)
    out, report = Path(args.out), Path(args.report)
    if args.smoke and "--out" not in argv:
        out = Path(tempfile.mkdtemp(prefix="mlvicx-results-smoke-"))
        report = out / "report" if "--report" not in argv else report
    if not args.report_only:
        run_experiment(settings, out, log=lambda m: print(m, flush=True))
    shown = [a for a in argv if a != "--report-only"]  # the command that recomputes everything
    command = "OMP_WAIT_POLICY=PASSIVE python -m mlvicx_core.results_experiment " + shlex.join(shown)
    md = write_report(out, report, command)
    print(f"report: {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
