"""End-to-end pretraining throughput (images/s), data loading included, and without it.

Runs ``mlvicx_core.train.pretrain`` for ``--steps`` optimizer steps twice in the same process:

- ``end_to_end``: the preset's dataset read through the DataLoader (for ``synthetic``: radiographs
  rendered on the fly by the phantom), two views made on the device, forward, loss, backward, step;
- ``preloaded``: the same images rendered once beforehand and served from memory, so the difference
  is the cost of producing the images.

Throughput is the median over steps (the first ``--warmup`` steps are dropped) of the per-step
``images_per_s`` the trainer logs (source images per second; each makes two views), excluding
checkpoint writes. Results go to ``benchmarks/results/pretrain_throughput[_<preset>_<device>].json``.

    python benchmarks/pretrain_throughput.py                      # teaching preset, this CPU
    python benchmarks/pretrain_throughput.py --preset paper --device cuda --steps 30   # a GPU
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mlvicx_core.config import load_config
from mlvicx_core.data.registry import dataset_from_config
from mlvicx_core.data.subset import Subset
from mlvicx_core.devices import select_device
from mlvicx_core.train.metrics_log import read_metrics
from mlvicx_core.train.step import autocast_dtype
from mlvicx_core.train.trainer import default_augment, pretrain

RESULTS = Path(__file__).resolve().parent / "results"


def measure(config, dataset, augment, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pretrain(config, dataset=dataset, augment=augment, run_dir=Path(tmp) / "run",
                 probe=False)
        wall = time.perf_counter() - start
        df = read_metrics(Path(tmp) / "run")
    rates = df["images_per_s"].dropna().tolist()[warmup:]
    return {"images_per_s": statistics.median(rates), "steps_timed": len(rates),
            "wall_s_including_setup_and_checkpoints": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="teaching")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()

    probe = load_config(args.preset, args.overrides)
    n = args.steps * probe.train.batch_size
    config = load_config(args.preset, [
        f"train.max_steps={args.steps}", "train.epochs=1", f"data.length={n}",
        "train.progress=false", "train.tensorboard=false", f"train.device={args.device}",
        f"train.ckpt_every={10 * args.steps}", *args.overrides])
    device = select_device(config.train.device)
    dataset, augment = dataset_from_config(config.data, labelled=False), default_augment(config)

    results = {"end_to_end": measure(config, dataset, augment, args.warmup)}
    t = time.perf_counter()
    preloaded = Subset(dataset, range(n), in_memory=True)
    render_s = time.perf_counter() - t
    results["preloaded"] = measure(config, preloaded, augment, args.warmup)
    results["preloaded"]["render_s_per_image"] = render_s / n
    results["ratio_end_to_end_over_preloaded"] = (
        results["end_to_end"]["images_per_s"] / results["preloaded"]["images_per_s"])

    out = {
        "benchmark": "pretrain_throughput",
        "preset": args.preset, "overrides": args.overrides,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "amp_bf16": autocast_dtype(device, config.train.amp, config.train.amp_cpu) is not None,
        "batch_size": config.train.batch_size, "image_size": config.data.view_size,
        "optimizer": config.optim.name, "dataset": config.data.dataset,
        "steps": args.steps, "warmup_steps_dropped": args.warmup,
        **results,
    }
    print(json.dumps(out, indent=1))
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if (args.preset, device.type) == ("teaching", "cpu") else \
        f"_{args.preset}_{device.type}"
    path = RESULTS / f"pretrain_throughput{suffix}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
