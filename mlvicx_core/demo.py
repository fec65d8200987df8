"""The README's main command (``make demo``, ``python -m mlvicx_core.demo`` or ``mlvicx demo``).

Pretrains MLVICX with the ``teaching`` preset on the embedded synthetic radiographs (a few minutes on
a 2-core CPU), then draws the loss terms and collapse diagnostics. Writes, under ``--out``
(default ``runs/demo``): ``checkpoints/step-*.pt``, ``metrics.jsonl``, ``trunk.pt``,
``training.png`` and ``config.yaml``. Running it again with the same settings reuses the finished run.
"""
from __future__ import annotations

import argparse
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="results folder (default: runs/demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a teaching-preset key, e.g. --set train.epochs=2")


def run(args: argparse.Namespace) -> int:
    from .train.figures import plot_training
    from .train.runconfig import load_config
    from .train.runs import finished_run, train_or_load

    config = load_config("teaching", [f"train.out_dir={args.out}", "train.run_name=teaching",
                                      *args.overrides])
    reused = finished_run(config) is not None
    print(f"MLVICX demo: teaching preset ({config.model.image_size} px, "
          f"{config.data.length} {config.data.dataset} radiographs, {config.train.epochs} epochs, "
          f"batch {config.train.batch_size}, {config.optim.name})", flush=True)
    start = time.perf_counter()
    result = train_or_load(config)
    figure = plot_training(result.run_dir)
    took = time.perf_counter() - start
    last = result.losses[-1] if result.losses else None
    print(("reused the finished run" if reused else f"trained {result.step} steps in {took:.0f} s")
          + (f"; final loss {last:.2f}" if last is not None else ""))
    print(f"Results are in {result.run_dir}/:\n"
          f"  figure      {figure}\n"
          f"  metrics     {result.metrics}\n"
          f"  checkpoint  {result.checkpoint}\n"
          f"  trunk       {result.trunk}  (torchvision ResNet-18 state dict)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlvicx_core.demo", description=__doc__.split(
        "\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
