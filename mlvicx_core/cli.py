"""The ``mlvicx`` command line: one function per subcommand, registered in :data:`SUBCOMMANDS`.

    mlvicx pretrain --preset teaching --set train.epochs=1 --set data.length=256
    torchrun --nproc_per_node 4 -m mlvicx_core.cli pretrain --preset paper --set data.root=/data/nih
    mlvicx demo
    mlvicx evaluate --checkpoint mlvicx=runs/x/checkpoints/step-00001000.pt --baseline random \\
        --set data.dataset=synthetic --set eval.tasks=[probe,knn] --out runs/eval
    mlvicx results --scale 1 --out runs/results --report docs
    mlvicx export-trunk runs/x/checkpoints/step-00001000.pt trunk.pt [--with-gates]
    mlvicx pretrain --keys          # every configuration key, its type, default and meaning

Every command that reads a configuration takes ``--preset`` and ``--set section.key=value`` (the keys
of ``mlvicx_core.config``), the one override syntax; flags are only for what is not a key
(checkpoints, output folders, the results experiment's seeds, datasets and encoders). Adding a subcommand: write
``add_<name>(parser)`` and ``cmd_<name>(args) -> int`` and add one line to :data:`SUBCOMMANDS`.
Configuration, data and checkpoint errors exit with status 2 and a message naming the key or file;
a run stopped by non-finite values or a failed write (a full disk) exits with status 1; a run
stopped by SIGTERM or SIGINT checkpoints the step it finished, says where in one line and exits
with 128 + the signal number (143, 130).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _config_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset,
                   help="preset name (paper, teaching, vicreg, vicreg-teaching) or path to a YAML "
                        f"file (default: {default_preset})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--keys", action="store_true", help="list every config key and exit")


def _load(args):
    from .config import load_config

    return load_config(args.preset, args.overrides)


def _keys() -> int:
    from .config import describe_keys

    print(describe_keys())
    return 0


# -- pretrain ------------------------------------------------------------------------------------
def add_pretrain(p: argparse.ArgumentParser) -> None:
    _config_args(p, "teaching")
    p.add_argument("--variant", default=None, help="apply a named variant (mlvicx_core/variants.yaml: "
                   "mlvicx, vicreg, mlvicx-no-cb, mlvicx-frozen)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import apply_variant
    from .train import distributed
    from .train.trainer import pretrain

    if args.keys:
        return _keys()
    config = _load(args)
    if args.variant:
        config = apply_variant(config, args.variant).set(args.overrides)
    main_rank = distributed.detect().is_main
    if main_rank:
        print(f"# resolved configuration (preset {config.preset})\n{config.to_yaml()}", flush=True)
    if args.dry_run:
        return 0
    try:
        result = pretrain(config)
    finally:  # also when a signal stopped the run (main() prints the line and exits 128 + n)
        distributed.teardown()
    if main_rank:
        print(f"finished {result.step} steps. Results in {result.run_dir}:\n"
              f"  checkpoint: {result.checkpoint}\n  metrics:    {result.metrics}\n"
              f"  trunk:      {result.trunk} (plain torchvision ResNet state dict)")
    return 0


# -- demo ----------------------------------------------------------------------------------------
def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs",
                   help="folder of the run folders (default: runs); the run is "
                        "<out>/teaching-<hash>, the one notebooks 01-04 use at their defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a teaching-preset key, e.g. --set train.max_steps=50")


def cmd_demo(args: argparse.Namespace) -> int:
    """Pretrain the teaching preset on the synthetic radiographs, then prove it learned
    (``mlvicx_core.experiments.demo``)."""
    from .config import load_config
    from .experiments.demo import report_text, run_demo

    config = load_config("teaching", [f"train.out_dir={args.out}", *args.overrides])
    report = run_demo(config, log=lambda text: print(text, flush=True))
    print(report_text(report))
    return 0


# -- export-trunk --------------------------------------------------------------------------------
def add_export_trunk(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint written by mlvicx pretrain (step-*.pt)")
    p.add_argument("output", help="where to write the trunk state dict (.pt)")
    p.add_argument("--with-gates", action="store_true",
                   help="also store the context-bottleneck weights under gates.<level>.*")


def cmd_export_trunk(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from .checkpoints import CheckpointError, export_trunk, is_checkpoint_name, load_model

    source, output = Path(args.checkpoint), Path(args.output)
    if source.exists() and output.exists() and os.path.samefile(source, output):
        raise CheckpointError(f"the output {output} is the checkpoint being read: the trunk would "
                              "replace it (and with it the run's weights, optimiser and RNG "
                              "state); give another output path, e.g. trunk.pt")
    if is_checkpoint_name(output):
        raise CheckpointError(f"the output {output} is named like a training checkpoint "
                              "(step-XXXXXXXX.pt): a trunk there could replace one, or be taken "
                              "for one when a run resumes; give another name, e.g. trunk.pt")
    print(export_trunk(load_model(source), output, with_gates=args.with_gates))
    return 0


# -- evaluate ------------------------------------------------------------------------------------
def add_evaluate(p: argparse.ArgumentParser) -> None:
    _config_args(p, "teaching")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="a checkpoint, model file or exported trunk (trunk.pt, mlvicx "
                        "export-trunk) to evaluate (repeatable); a trunk has no heads, so only "
                        "eval.features=trunk or layer3+layer4 read it")
    p.add_argument("--baseline", action="append", default=[], choices=["random", "imagenet"],
                   help="reference encoder built with the first checkpoint's (or --preset's) "
                        "network")
    p.add_argument("--out", required=True, help="output folder for results.csv/.md and figures/")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .checkpoints import load_model
    from .config import ConfigError
    from .data.registry import evaluation_splits
    from .evaluation.baselines import BaselineUnavailable, reference_encoder
    from .evaluation.pipeline import check_settings, evaluate

    if args.keys:
        return _keys()
    config = _load(args)
    pairs = {}
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"mlvicx evaluate: error: --checkpoint {item!r}: expected NAME=PATH")
        pairs[name] = path
    if not pairs and not args.baseline:
        raise SystemExit("mlvicx evaluate: error: nothing to evaluate: give --checkpoint "
                         "NAME=PATH and/or --baseline")
    splits = evaluation_splits(config.data, config.eval.split_sizes)
    check_settings(config.eval, splits)  # before any checkpoint is read or feature extracted
    encoders: dict = {name: load_model(path, allow_trunk=True) for name, path in pairs.items()}
    features = config.eval.features
    for name, model in encoders.items():
        if getattr(model, "trunk_only", False) and features in ("global", "multi"):
            raise ConfigError(f"--checkpoint {name}={pairs[name]} is an exported trunk, which has "
                              f"no projector heads: eval.features={features} reads the "
                              f"{'global' if features == 'global' else 'multi-level'} projector. "
                              "Use eval.features=trunk or layer3+layer4, or give the training "
                              "checkpoint")
    model_config = next(iter(encoders.values())).config if encoders else config.model
    for kind in args.baseline:
        try:
            encoders[kind] = reference_encoder(kind, model_config, seed=config.eval.seed)
        except BaselineUnavailable as err:
            encoders[kind] = str(err)
    evaluate(encoders, splits, config.eval, dataset=config.data.dataset, out_dir=Path(args.out),
             log=lambda m: print(m, flush=True))
    print(f"wrote {Path(args.out) / 'results.csv'} and {Path(args.out) / 'results.md'}")
    return 0


# -- results -------------------------------------------------------------------------------------
def add_results(p: argparse.ArgumentParser) -> None:
    _config_args(p, "results")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply pretraining steps and evaluation split sizes (default 1)")
    p.add_argument("--out", default="runs/results", help="runs, feature cache and raw CSVs")
    p.add_argument("--report", default="docs",
                   help="where RESULTS.md, figures/ and results/ are written (default docs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", default=None, metavar="DATASET",
                   help="synthetic (the default), nih, pneumoniamnist (each real one takes about "
                        "as long again)")
    p.add_argument("--encoders", nargs="+", default=None, metavar="ENCODER",
                   help="random and the variants of mlvicx_core/variants.yaml (default: all)")
    p.add_argument("--smoke", action="store_true",
                   help="the results-smoke preset (2 steps of 8, tiny splits, narrow heads), one "
                        "seed; out and report default to a temporary folder")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from the CSVs already in --out")


def cmd_results(args: argparse.Namespace) -> int:
    """The results experiment (``mlvicx_core.experiments.results``), then its report."""
    import shlex
    import tempfile
    from pathlib import Path

    from .config import ConfigError
    from .experiments.results import DATASETS, DEFAULT_DATASETS, ENCODERS, run_experiment
    from .experiments.results_report import write_report

    if args.keys:
        return _keys()
    argv = args.argv
    for flag, given, known in (("--datasets", args.datasets, DATASETS),
                               ("--encoders", args.encoders, ENCODERS)):
        bad = [x for x in given or () if x not in known]
        if bad:
            raise ConfigError(f"{flag} {' '.join(bad)}: expected some of {' '.join(known)}")
    if args.smoke and "--preset" not in argv:
        args.preset = "results-smoke"
    config = _load(args)
    seeds = [0] if args.smoke and "--seeds" not in argv else args.seeds
    out, report = Path(args.out), Path(args.report)
    if args.smoke and "--out" not in argv:
        out = Path(tempfile.mkdtemp(prefix="mlvicx-results-smoke-"))
        report = out / "report" if "--report" not in argv else report
    if not args.report_only:
        run_experiment(config, out, seeds=tuple(seeds),
                       datasets=tuple(args.datasets or DEFAULT_DATASETS),
                       encoders=tuple(args.encoders or ENCODERS), scale=args.scale,
                       log=lambda m: print(m, flush=True))
    shown = [a for a in argv if a != "--report-only"]  # the command that recomputes everything
    md = write_report(out, report, "mlvicx results " + shlex.join(shown))
    print(f"report: {md}")
    return 0


#: name -> (help, add_arguments, run). One line per subcommand.
SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "pretrain": ("self-supervised pretraining (resumes an interrupted run)", add_pretrain,
                 cmd_pretrain),
    "demo": ("a few minutes of teaching-size pretraining on synthetic radiographs, and the proof "
             "that it learned", add_demo, cmd_demo),
    "evaluate": ("evaluate checkpoints: linear probe, kNN, fine-tuning, segmentation, Grad-CAM, "
                 "UMAP", add_evaluate, cmd_evaluate),
    "results": ("the results experiment: random init and the variants (VICReg, MLVICX, Barlow "
                "Twins, ablations); writes "
                "RESULTS.md", add_results, cmd_results),
    "export-trunk": ("save a checkpoint's trunk as a torchvision ResNet state dict",
                     add_export_trunk, cmd_export_trunk),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlvicx", description="MLVICX self-supervised learning "
                                     "for chest X-rays")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(run=run)
    return parser


def error_message(err: BaseException) -> str:
    """``str(err)``, except for an error re-raised from a DataLoader worker: torch rebuilds those as
    ``"Caught X in DataLoader worker process N.\nOriginal Traceback ..."`` (the whole chained
    traceback in the message); the original message is the traceback's last line."""
    text = str(err)
    name = type(err).__qualname__
    if text.startswith(f"Caught {name} ") and "\nOriginal Traceback" in text:
        original = text.rpartition(f"{name}: ")[2].strip()
        if original:
            return original
    return text


def main(argv: list[str] | None = None) -> int:
    import errno

    from .checkpoints import CheckpointError
    from .config import ConfigError
    from .data.imageio import ImageReadError
    from .data.registry import DatasetError
    from .train.distributed import detect
    from .train.trainer import TrainingInterrupted

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv[1:]  # the subcommand's own arguments, as given (the results report shows them)
    where = f"mlvicx {args.command}"
    try:
        return args.run(args)
    except TrainingInterrupted as err:  # SIGTERM / SIGINT: the step was finished and saved
        if detect().is_main:
            print(f"{where}: {err}", file=sys.stderr, flush=True)
        return err.exit_status
    except KeyboardInterrupt:  # outside a training loop, or a second Ctrl-C: stopped at once
        print(f"{where}: interrupted (SIGINT); stopped at once. Checkpoints written before are "
              "intact: pretraining resumes from the newest one", file=sys.stderr, flush=True)
        return 130
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError) as err:
        print(f"{where}: error: {error_message(err)}", file=sys.stderr)
        return 2
    except ImageReadError as err:
        print(f"{where}: error: {error_message(err)}\n(to skip unreadable files instead, add "
              "--set data.on_error=skip)", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # NonFiniteLossError
        print(f"{where}: training stopped: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full, read-only or vanished disk: checkpoints name the file
        hint = ("\n(free some space and run the same command again: pretraining resumes from "
                "the newest checkpoint)" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                else "")
        print(f"{where}: error: {error_message(err)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
