"""``mlvicx evaluate``: checkpoints + a dataset -> results.csv, results.md and figures.

Example::

    mlvicx evaluate --checkpoint mlvicx=runs/mlvicx/last.pt --checkpoint vicreg=runs/vicreg/last.pt \\
        --baseline random --baseline imagenet --dataset phantom --dataset-arg length=2000 \\
        --image-size 224 --fractions 0.01 0.1 1.0 --tasks probe knn finetune gradcam umap \\
        --out results/eval

``--dataset`` is ``phantom``, ``nih`` or any ``package.module:callable`` returning a contract
dataset; it is called with ``image_size=`` and the ``--dataset-arg key=value`` pairs (values parsed
as int, float or bool when they look like one).
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from .checkpoint import BaselineUnavailable, load_encoder, reference_encoder
from .runner import TASKS, EvalSettings, run_evaluation

DATASETS = {
    "phantom": "mlvicx_core.data.phantom:SyntheticCXR",
    "nih": "mlvicx_core.data.nih:NIHChestXray14",
}


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r}: expected NAME=VALUE")
        out[key] = value
    return out


def build_dataset(spec: str, image_size: int, kwargs: dict):
    """Instantiate ``spec`` (an alias in :data:`DATASETS` or ``module:callable``)."""
    target = DATASETS.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise SystemExit(f"--dataset {spec!r}: expected one of {sorted(DATASETS)} or module:callable")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"--dataset {spec!r}: cannot import {target} ({err})") from err
    return factory(image_size=image_size, **kwargs)


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("evaluate", help="evaluate checkpoints: probe, kNN, fine-tuning, "
                              "segmentation, Grad-CAM, UMAP", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="a checkpoint to evaluate (repeatable)")
    p.add_argument("--baseline", action="append", default=[], choices=["random", "imagenet"],
                   help="reference encoder built with the first checkpoint's (or --preset's) trunk")
    p.add_argument("--preset", default="teaching", help="model preset for baselines when no "
                   "checkpoint is given (default: teaching)")
    p.add_argument("--dataset", required=True, help=f"{sorted(DATASETS)} or module:callable")
    p.add_argument("--dataset-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--tasks", nargs="+", default=["probe", "knn"], choices=TASKS)
    p.add_argument("--val", type=float, default=0.1, help="fraction of patients for validation")
    p.add_argument("--test", type=float, default=0.2, help="fraction of patients for test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cuda / mps / cpu (default: best available)")
    p.add_argument("--cache-dir", default=None, help="cache extracted features here")
    p.add_argument("--keep-gates", action="store_true", help="transfer the context bottlenecks too")
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--seg-epochs", type=int, default=10)
    p.add_argument("--seg-fraction", type=float, default=1.0)
    p.add_argument("--gradcam-tap", default="layer4",
                   choices=["stem", "layer1", "layer2", "layer3", "layer4"])
    p.add_argument("--gradcam-images", type=int, default=64,
                   help="positive test images scored per finding for localisation")
    p.add_argument("--tolerance", type=float, default=0.0, help="pointing-game tolerance in px")
    p.add_argument("--colour-by", nargs="+", default=[], help="UMAP colour columns")
    p.add_argument("--out", required=True, help="output folder for results.csv/.md and figures/")
    p.set_defaults(func=evaluate_main)
    return p


def evaluate_main(args: argparse.Namespace) -> int:
    """Run the evaluation described by parsed ``args``; prints the Markdown table's path."""
    from ..config import get_preset

    checkpoints = _pairs(args.checkpoint, "--checkpoint")
    if not checkpoints and not args.baseline:
        raise SystemExit("nothing to evaluate: give --checkpoint NAME=PATH and/or --baseline")
    encoders: dict = {name: load_encoder(path) for name, path in checkpoints.items()}
    config = next(iter(encoders.values())).config if encoders else get_preset(args.preset)
    for kind in args.baseline:
        try:
            encoders[kind] = reference_encoder(kind, config, seed=args.seed)
        except BaselineUnavailable as err:
            encoders[kind] = str(err)
    kwargs = {k: _parse_value(v) for k, v in _pairs(args.dataset_arg, "--dataset-arg").items()}
    dataset = build_dataset(args.dataset, args.image_size, kwargs)
    settings = EvalSettings(
        fractions=tuple(args.fractions), tasks=tuple(args.tasks), val=args.val, test=args.test,
        seed=args.seed, n_boot=args.n_boot, batch_size=args.batch_size, device=args.device,
        cache_dir=args.cache_dir, keep_gates=args.keep_gates,
        finetune_epochs=args.finetune_epochs, seg_epochs=args.seg_epochs,
        seg_fraction=args.seg_fraction, gradcam_tap=args.gradcam_tap,
        gradcam_images=args.gradcam_images, tolerance=args.tolerance,
        colour_by=tuple(args.colour_by))
    csv_path, md_path = run_evaluation(encoders, dataset, Path(args.out), settings)
    print(f"wrote {csv_path} and {md_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m mlvicx_core.evaluation.cli evaluate ...``)."""
    parser = argparse.ArgumentParser(prog="mlvicx")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
