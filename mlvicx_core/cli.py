"""The ``mlvicx`` command line: one function per subcommand, registered in :data:`SUBCOMMANDS`.

    mlvicx pretrain --preset teaching --set train.epochs=1 --set data.length=256
    torchrun --nproc_per_node 4 -m mlvicx_core.cli pretrain --preset paper --set data.root=/data/nih
    mlvicx demo
    mlvicx export-trunk runs/x/checkpoints/step-00001000.pt trunk.pt [--with-gates]
    mlvicx evaluate --checkpoint mlvicx=runs/x/checkpoints/step-00001000.pt --baseline random \\
        --dataset synthetic --image-size 64 --out runs/eval

Adding a subcommand: write ``add_<name>(parser)`` and ``cmd_<name>(args) -> int`` and add one line to
:data:`SUBCOMMANDS`. Configuration errors exit with status 2 and a message naming the key or path.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def _config_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset,
                   help="preset name (paper, teaching) or path to a YAML file "
                        f"(default: {default_preset})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")


# -- pretrain ------------------------------------------------------------------------------------
def add_pretrain(p: argparse.ArgumentParser) -> None:
    _config_args(p, "teaching")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .train import distributed
    from .train.runconfig import load_config
    from .train.trainer import pretrain, run_dir_for

    config = load_config(args.preset, args.overrides)
    main_rank = distributed.detect().is_main
    if main_rank:
        print(f"# resolved configuration (preset {config.preset})\n{config.to_yaml()}", flush=True)
    if args.dry_run:
        return 0
    result = pretrain(config)
    if main_rank:
        print(f"finished {result.step} steps. Results in {run_dir_for(config)}:\n"
              f"  checkpoint: {result.checkpoint}\n  metrics:    {result.metrics}\n"
              f"  trunk:      {result.trunk} (plain torchvision ResNet state dict)")
    distributed.teardown()
    return 0


# -- demo ----------------------------------------------------------------------------------------
def add_demo(p: argparse.ArgumentParser) -> None:
    from .demo import add_arguments

    add_arguments(p)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args)


# -- export-trunk --------------------------------------------------------------------------------
def add_export_trunk(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint written by mlvicx pretrain (step-*.pt)")
    p.add_argument("output", help="where to write the trunk state dict (.pt)")
    p.add_argument("--with-gates", action="store_true",
                   help="also store the context-bottleneck weights under gates.<level>.*")


def cmd_export_trunk(args: argparse.Namespace) -> int:
    from .model import MLVICX
    from .train.checkpoint import export_trunk, load_checkpoint
    from .train.runconfig import from_dict

    state = load_checkpoint(args.checkpoint)
    model = MLVICX(from_dict(state["config"]).model)
    model.load_state_dict(state["model"])
    print(export_trunk(model, args.output, with_gates=args.with_gates))
    return 0


# -- evaluate ------------------------------------------------------------------------------------
def add_evaluate(p: argparse.ArgumentParser) -> None:
    from .evaluation.cli import add_evaluate_arguments

    add_evaluate_arguments(p)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.cli import evaluate_main

    return evaluate_main(args)


#: name -> (help, add_arguments, run). One line per subcommand.
SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "pretrain": ("self-supervised pretraining (resumes an interrupted run)", add_pretrain,
                 cmd_pretrain),
    "demo": ("a few minutes of teaching-size pretraining on synthetic radiographs", add_demo,
             cmd_demo),
    "export-trunk": ("save a checkpoint's trunk as a torchvision ResNet state dict",
                     add_export_trunk, cmd_export_trunk),
    "evaluate": ("evaluate checkpoints: linear probe, kNN, fine-tuning, segmentation, Grad-CAM, "
                 "UMAP", add_evaluate, cmd_evaluate),
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


def main(argv: list[str] | None = None) -> int:
    from .train.runconfig import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as err:
        print(f"mlvicx {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # NonFiniteLossError
        print(f"mlvicx {args.command}: training stopped: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
