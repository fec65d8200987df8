"""The kit on an accelerator, in one prepared run: the first record of the hardware researchers use.

Two parts, each saved as soon as it finishes (``benchmarks/results/accelerator_record.{json,md}``,
rows keyed by the device's name, so records of several machines sit side by side):

1. **throughput**: the paper preset at 224 px (``--paper-batch``, default 64), MLVICX and VICReg,
   with bf16 autocast on and off and ``torch.compile`` on and off: images per second of the kit's
   own ``train_step`` (median of ``--repeats`` steps after warm-up; the compiled variants get
   extra warm-up steps) and the peak memory (``torch.cuda.max_memory_allocated``);
2. **learning**: the teaching recipe at ``--scale`` times its steps (default 20), pretrained with
   ``mlvicx_core.train.trainer.pretrain`` (online probe on), then the held-out linear probe of the
   trunk against the same network at random init, with the paired difference and its 95 % CI.

Nothing here is tuned for one machine: the device is the kit's ``auto`` choice (CUDA, else MPS,
else CPU). ``--quick`` shrinks everything to a smoke test that runs on a CPU in about a minute
(written to a temporary folder, not to the saved records; run it before spending
accelerator time).

    python benchmarks/accelerator_record.py                 # on the GPU machine, ~10-30 min
    python benchmarks/accelerator_record.py --quick         # anywhere, seconds to a minute
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mlvicx_core import MLVICX, load_config  # noqa: E402
from mlvicx_core.devices import select_device  # noqa: E402
from mlvicx_core.train.step import build_step, train_step  # noqa: E402

RESULTS = HERE / "results" / "accelerator_record.json"


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{dev.type} ({platform.processor() or platform.machine()})"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def throughput(dev, method: str, amp: bool, compile_: bool, batch: int, size: int,
               repeats: int) -> dict:
    """Images per second and peak memory of the paper preset's step (two views of ``batch``)."""
    overrides = {"data.view_size": size, "train.batch_size": batch, "train.amp": amp,
                 "train.compile": compile_}
    cfg = load_config("paper" if method == "mlvicx" else "vicreg", overrides)
    torch.manual_seed(0)
    model = MLVICX(cfg.model).to(dev, memory_format=torch.channels_last)
    state = build_step(cfg, model, dev, steps_per_epoch=1000)
    g = torch.Generator().manual_seed(0)
    views = [torch.rand(batch, 1, size, size, generator=g).to(dev) for _ in range(2)]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(repeats + (5 if compile_ else 2)):
        sync(dev)
        t0 = time.perf_counter()
        train_step(state, *views)
        sync(dev)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times[-repeats:])
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
    return {"method": method, "amp": amp, "compile": compile_, "batch": batch, "size": size,
            "images_per_s": round(2 * batch / med, 1), "step_s": round(med, 4),
            "first_step_s": round(times[0], 2), "peak_mb": round(peak, 1)}


def learning(dev, scale: float, quick: bool) -> dict:
    """The teaching recipe at ``scale`` times its steps: held-out probe gain over random init."""
    from mlvicx_core.data.registry import evaluation_splits
    from mlvicx_core.evaluation.baselines import reference_encoder
    from mlvicx_core.evaluation.metrics import paired_auroc_difference
    from mlvicx_core.evaluation.pipeline import evaluate, mean_auroc
    from mlvicx_core.train.trainer import pretrain

    base = load_config("teaching")
    sets = {"train.epochs": max(1, round(base.train.epochs * scale)), "train.device": str(dev),
            "train.progress": False, "train.tensorboard": False,
            "train.eval_every": max(1, round(base.train.eval_every * scale))}
    if quick:
        sets.update({"train.epochs": 1, "data.length": 128, "train.eval_every": 2,
                     "train.probe_images": 64, "train.probe_val_images": 64,
                     "eval.split_sizes": [96, 32, 64], "eval.n_boot": 50})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("teaching", {**sets, "train.out_dir": tmp, "train.run_name": "run"})
        t0 = time.perf_counter()
        result = pretrain(cfg)
        took = time.perf_counter() - t0
    splits = evaluation_splits(cfg.data, cfg.eval.split_sizes, in_memory=True)
    encoders = {"random init": reference_encoder("random", cfg.model, seed=cfg.train.seed),
                "pretrained": result.model}
    test = {}

    def keep(ev):
        test["labels"], test[ev.name] = ev.test_scores[("probe", 1.0)]

    rows = evaluate(encoders, splits, cfg.eval.replace(tasks=("probe",), fractions=(1.0,),
                                                       device=str(dev)),
                    dataset="synthetic", on_encoder=keep)
    diff = paired_auroc_difference(test["labels"], test["pretrained"], test["random init"],
                                   n_boot=cfg.eval.n_boot)
    return {"steps": result.step, "train_s": round(took, 1),
            "images_per_s": round(result.step * cfg.train.batch_size / took, 1),
            "random": [round(v, 4) for v in mean_auroc(rows, "random init")],
            "pretrained": [round(v, 4) for v in mean_auroc(rows, "pretrained")],
            "gain": [round(v, 4) for v in diff]}


def save(record: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    saved[record["device"]] = record
    RESULTS.write_text(json.dumps(saved, indent=1))
    lines = ["# The kit on accelerators (benchmarks/accelerator_record.py)", ""]
    for dev, r in saved.items():
        lines += [f"## {dev} ({r['date']}, torch {r['torch']}{', quick' if r['quick'] else ''})",
                  "", "| method | bf16 | compile | batch x size | images/s | step s | first step s "
                  "| peak MB |", "|---|---|---|---|---|---|---|---|"]
        for t in r.get("throughput", []):
            lines.append(f"| {t['method']} | {t['amp']} | {t['compile']} | {t['batch']} x "
                         f"{t['size']} | {t['images_per_s']} | {t['step_s']} | "
                         f"{t['first_step_s']} | {t['peak_mb']} |")
        if "learning" in r:
            ln = r["learning"]
            lines += ["", f"Teaching recipe x{r['scale']:g}: {ln['steps']} steps in "
                          f"{ln['train_s']} s ({ln['images_per_s']} images/s); held-out probe "
                          f"random init {ln['random'][0]:.3f}, pretrained {ln['pretrained'][0]:.3f}, "
                          f"difference {ln['gain'][0]:+.3f} [{ln['gain'][1]:+.3f}, "
                          f"{ln['gain'][2]:+.3f}]", ""]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=20.0, help="teaching steps multiplier")
    ap.add_argument("--paper-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="a CPU-sized smoke test")
    ap.add_argument("--skip", nargs="*", default=[], choices=("throughput", "learning"))
    args = ap.parse_args()
    if args.quick:  # a smoke test leaves the saved records alone
        global RESULTS
        RESULTS = Path(tempfile.mkdtemp()) / "accelerator_record.json"
    dev = select_device("auto")
    record = {"device": device_name(dev), "date": time.strftime("%Y-%m-%d %H:%M"),
              "torch": torch.__version__, "quick": args.quick, "scale": args.scale}
    if "throughput" not in args.skip:
        size, batch, reps = (64, 4, 1) if args.quick else (224, args.paper_batch, args.repeats)
        record["throughput"] = []
        for method in ("mlvicx", "vicreg"):
            for amp in (True, False):
                for compile_ in ((False,) if args.quick else (False, True)):
                    row = throughput(dev, method, amp, compile_, batch, size, reps)
                    record["throughput"].append(row)
                    print(row, flush=True)
                    save(record)
    if "learning" not in args.skip:
        record["learning"] = learning(dev, args.scale, args.quick)
        print(record["learning"], flush=True)
        save(record)
    print(RESULTS.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
