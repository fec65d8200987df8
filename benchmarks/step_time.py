"""One full MLVICX training step, timed: pooled vs literal multi-level branch vs VICReg.

A step is the kit's own ``mlvicx_core.train.step.train_step`` (two views, forward, loss, finiteness
checks, backward, clipping, the preset's optimizer and schedule), built by ``build_step`` from the
preset's configuration with a variant of ``mlvicx_core.variants`` applied. For each setting
the three variants run in separate child processes (so peak memory is each variant's own), one
warm-up step then ``--repeats`` timed steps; medians, images/s and ratios are printed and saved to
``benchmarks/results/step_time.json``.

    python benchmarks/step_time.py                 # all settings (several minutes on 2 CPU cores)
    python benchmarks/step_time.py --quick         # teaching preset only
    python benchmarks/step_time.py --threads 1     # one math thread: robust on a shared machine

Besides wall-clock seconds each step's CPU time (``time.process_time``) is recorded; on a machine
shared with other work, the single-threaded CPU-time ratios are the trustworthy comparison.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mlvicx_core import MLVICX, load_config
from mlvicx_core.devices import select_device
from mlvicx_core.train.step import build_step, train_step
from mlvicx_core.variants import VARIANTS as METHOD_VARIANTS

RESULTS = Path(__file__).parent / "results" / "step_time.json"
TABLE = RESULTS.with_suffix(".md")

SETTINGS = [  # (name, preset, image size, batch)
    ("teaching-64px-b64", "teaching", 64, 64),
    ("paper-64px-b32", "paper", 64, 32),
    ("paper-224px-b16", "paper", 224, 16),
]
VARIANTS = {
    "mlvicx": METHOD_VARIANTS["mlvicx"],
    # the same network with the multi-level branch computed as literally defined (64x64 maps)
    "mlvicx-literal": {**METHOD_VARIANTS["mlvicx"], "model.multilevel_impl": "literal"},
    "vicreg": METHOD_VARIANTS["vicreg"],
    # separates the two additions to VICReg: the multi-level branch alone (no context bottlenecks)
    "mlvicx-no-cb": METHOD_VARIANTS["mlvicx-no-cb"],
}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elif dev.type == "mps":
        torch.mps.synchronize()


def run_one(preset: str, size: int, batch: int, variant: str, repeats: int,
            threads: int | None = None) -> dict:
    """Runs in a child process: times ``repeats`` steps after one warm-up."""
    if threads:
        torch.set_num_threads(threads)
    dev = select_device()
    torch.manual_seed(0)
    cfg = load_config(preset, {**VARIANTS[variant], "data.image_size": size,
                               "train.batch_size": batch})
    model = MLVICX(cfg.model).to(dev).train()
    state = build_step(cfg, model, dev, steps_per_epoch=1000)
    g = torch.Generator().manual_seed(0)
    view_a = torch.rand(batch, 1, size, size, generator=g).to(dev)
    view_b = torch.rand(batch, 1, size, size, generator=g).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for i in range(repeats + 1):
        sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(state, view_a, view_b)
        sync(dev)
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        peak_kind = "cuda max_memory_allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        peak_kind = "process peak RSS"
    med = statistics.median(times)
    return {"median_s": med, "images_per_s": 2 * batch / med, "peak_mb": peak_mb,
            "median_cpu_s": statistics.median(cpu_times), "peak_kind": peak_kind,
            "times_s": times, "device": str(dev), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="teaching preset only")
    ap.add_argument("--threads", type=int, default=0, help="math threads (default: torch's)")
    ap.add_argument("--setting", action="append", default=[], choices=[s[0] for s in SETTINGS],
                    help="run only these settings (repeatable); saved numbers of others are kept")
    ap.add_argument("--child", nargs=4, metavar=("PRESET", "SIZE", "BATCH", "VARIANT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        preset, size, batch, variant = args.child
        print(json.dumps(run_one(preset, int(size), int(batch), variant, args.repeats,
                                 args.threads)))
        return

    settings = SETTINGS[:1] if args.quick else SETTINGS
    if args.setting:
        settings = [s for s in SETTINGS if s[0] in args.setting]
    results: dict = {"torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
                     "machine": platform.processor() or platform.machine(), "settings": {}}
    for name, preset, size, batch in settings:
        row = {}
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--repeats", str(args.repeats),
                 "--threads", str(args.threads),
                 "--child", preset, str(size), str(batch), variant],
                check=True, capture_output=True, text=True,
            )
            row[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            r = row[variant]
            print(f"{name:20s} {variant:15s} {r['median_s']:8.3f} s/step "
                  f"(cpu {r['median_cpu_s']:7.3f} s) "
                  f"{r['images_per_s']:8.1f} img/s  peak {r['peak_mb']:8.0f} MB", flush=True)
        row["ratios"] = {
            "literal_over_pooled": row["mlvicx-literal"]["median_s"] / row["mlvicx"]["median_s"],
            "pooled_over_vicreg": row["mlvicx"]["median_s"] / row["vicreg"]["median_s"],
            "literal_over_pooled_memory": row["mlvicx-literal"]["peak_mb"] / row["mlvicx"]["peak_mb"],
            "literal_over_pooled_cpu": (row["mlvicx-literal"]["median_cpu_s"]
                                        / row["mlvicx"]["median_cpu_s"]),
            "pooled_over_vicreg_cpu": row["mlvicx"]["median_cpu_s"] / row["vicreg"]["median_cpu_s"],
            "branch_only_over_vicreg_cpu": (row["mlvicx-no-cb"]["median_cpu_s"]
                                            / row["vicreg"]["median_cpu_s"]),
        }
        print(f"{name:20s} ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in row["ratios"].items()))
        results["settings"][name] = row
    results["device"] = row["mlvicx"]["device"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if RESULTS.exists() and (args.quick or args.setting):  # refresh only what ran
        old = json.loads(RESULTS.read_text())
        old["settings"].update(results["settings"])
        results["settings"] = old["settings"]
    RESULTS.write_text(json.dumps(results, indent=2))
    TABLE.write_text(markdown(results))
    print(f"saved {RESULTS} and {TABLE}")


def markdown(results: dict) -> str:
    """The saved numbers as a Markdown table (what the README links to)."""
    lines = [
        f"# One training step: `benchmarks/step_time.py` on {results['device']}",
        f"(torch {results['torch']}, {results['threads']} threads; median of the timed steps)",
        "",
        "| setting | variant | s/step (wall) | CPU s/step | images/s | peak MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, row in results["settings"].items():
        for variant in VARIANTS:
            if variant not in row:
                continue
            r = row[variant]
            lines.append(f"| {name} | {variant} | {r['median_s']:.3f} | {r['median_cpu_s']:.3f} "
                         f"| {r['images_per_s']:.1f} | {r['peak_mb']:.0f} |")
    lines += ["", "| setting | literal / pooled (wall) | literal / pooled (CPU) "
              "| pooled / VICReg (wall) | pooled / VICReg (CPU) | literal / pooled (memory) "
              "| branch without CB / VICReg (CPU) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in results["settings"].items():
        r = row["ratios"]
        branch = r.get("branch_only_over_vicreg_cpu")
        lines.append(f"| {name} | {r['literal_over_pooled']:.2f}x | {r['literal_over_pooled_cpu']:.2f}x "
                     f"| {r['pooled_over_vicreg']:.2f}x | {r['pooled_over_vicreg_cpu']:.2f}x "
                     f"| {r['literal_over_pooled_memory']:.2f}x "
                     f"| {f'{branch:.2f}x' if branch else 'not run'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
