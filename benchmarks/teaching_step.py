"""Steps per CPU-minute of the teaching recipe: the step before this release against today's, and
the cheaper networks the recipe search tried, measured in one run; then where the chosen step's
time goes.

A step here is what the trainer repeats: fetch a batch of 64 radiographs from the DataLoader
(rendered on the fly, or from memory with ``data.in_memory``), make the two views
(``BatchTwoViews``), and the kit's ``train_step`` (forward, loss, backward, optimizer). Variants:

- ``before``: the teaching step as it was (ResNet-18 width 64, 1024-d heads, AdamW's per-parameter
  loop, radiographs rendered every epoch);
- ``+ fused AdamW``, ``+ in-memory data``: each change on its own, cumulatively;
- ``width 48 / 32 / 16`` and ``projectors 512``: the networks of the search;
- ``chosen``: the shipped teaching preset.

Variants run round-robin (``--rounds`` rounds of ``--steps`` steps each, after one warm-up round)
in one process with one math thread, so load drift hits them alike; the table gives the median
CPU-seconds per step (``time.process_time``), steps per CPU-minute and the speed-up over
``before``. ``--profile`` then splits one more step of the chosen variant by component with
``benchmarks/step_time.py``'s profiler split (trunk, gates, multi-level branch, projectors, loss,
optimizer), plus the data fetch and the views timed around it.

    python benchmarks/teaching_step.py --profile        # saves benchmarks/results/teaching_step.*
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from mlvicx_core.config import load_config  # noqa: E402
from mlvicx_core.data.augment import BatchTwoViews  # noqa: E402
from mlvicx_core.data.registry import dataset_from_config  # noqa: E402
from mlvicx_core.model import MLVICX  # noqa: E402
from mlvicx_core.train import optim  # noqa: E402
from mlvicx_core.train.step import build_step, train_step  # noqa: E402

RESULTS = HERE / "results" / "teaching_step.json"
BEFORE = ["model.width=64", "model.projector=[1024,1024,1024]",
          "model.ml_projector=[1024,1024,1024]", "data.in_memory=false",
          "model.projector_last_bn=true"]
# name -> (overrides on the teaching preset, fused AdamW)
VARIANTS = {
    "before": (BEFORE, False),
    "+ fused AdamW": (BEFORE, True),
    "+ in-memory data": ([*BEFORE, "data.in_memory=true"], True),
    "width 48": ([*BEFORE, "data.in_memory=true", "model.width=48"], True),
    "width 32": ([*BEFORE, "data.in_memory=true", "model.width=32"], True),
    "width 16": ([*BEFORE, "data.in_memory=true", "model.width=16"], True),
    "width 32, projectors 512": ([*BEFORE, "data.in_memory=true", "model.width=32",
                                  "model.projector=[512,512,512]",
                                  "model.ml_projector=[512,512,512]"], True),
    "chosen (teaching preset)": ([], True),
}


class Setup:
    """One variant's loader, views and step state, ready to run steps."""

    def __init__(self, overrides: list[str], fused: bool) -> None:
        cfg = load_config("teaching", overrides)
        self.config = cfg
        torch.manual_seed(0)
        self.dataset = dataset_from_config(cfg.data, labelled=False,
                                           in_memory=cfg.data.in_memory)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=cfg.train.batch_size,
                                                  shuffle=True, drop_last=True)
        self.views = BatchTwoViews(cfg.aug, cfg.data.view_size, seed=0)
        saved = optim._fused_ok
        if not fused:
            optim._fused_ok = lambda model: False
        try:
            self.state = build_step(cfg, MLVICX(cfg.model), torch.device("cpu"),
                                    len(self.dataset) // cfg.train.batch_size)
        finally:
            optim._fused_ok = saved
        self._batches = iter(())

    def batch(self) -> torch.Tensor:
        try:
            return next(self._batches)["image"]
        except StopIteration:
            self._batches = iter(self.loader)
            return next(self._batches)["image"]

    def step(self) -> dict[str, float]:
        t0 = time.process_time()
        images = self.batch()
        t1 = time.process_time()
        a, b = self.views(images)
        t2 = time.process_time()
        train_step(self.state, a, b)
        t3 = time.process_time()
        return {"data": t1 - t0, "views": t2 - t1, "step": t3 - t2, "total": t3 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--profile", action="store_true", help="also split the chosen step")
    args = ap.parse_args()
    torch.set_num_threads(1)
    setups = {name: Setup(*VARIANTS[name]) for name in args.variants}
    times: dict[str, list[dict]] = {name: [] for name in setups}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for name, s in setups.items():
            for _ in range(args.steps):
                t = s.step()
                if rnd:
                    times[name].append(t)
        print(f"round {rnd} done", flush=True)
    rows = {}
    for name, ts in times.items():
        med = {k: statistics.median(t[k] for t in ts) for k in ts[0]}
        rows[name] = {**{f"{k}_cpu_s": round(v, 4) for k, v in med.items()},
                      "steps_per_cpu_min": round(60 / med["total"], 1)}
    base = rows.get("before", next(iter(rows.values())))["total_cpu_s"]
    for r in rows.values():
        r["speedup_over_before"] = round(base / r["total_cpu_s"], 2)
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": platform.processor() or
           platform.machine(), "threads": torch.get_num_threads(), "steps": args.steps,
           "rounds": args.rounds, "torch": torch.__version__, "rows": rows}
    if args.profile:
        from step_time import profile_step

        s = setups.get("chosen (teaching preset)") or Setup([], True)
        images = s.batch()
        t0 = time.process_time()
        a, b = s.views(images)
        views_ms = (time.process_time() - t0) * 1000
        split = profile_step(s.state.model, s.state, a, b)
        out["profile"] = {**split, "views_ms": round(views_ms, 1),
                          "data_ms": round(rows.get("chosen (teaching preset)", {}).get(
                              "data_cpu_s", float("nan")) * 1000, 1)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    lines = [f"# Teaching step: steps per CPU-minute ({out['date']}, {out['cpu']}, one thread, "
             f"median of {args.rounds} x {args.steps} steps per variant, round-robin)", "",
             "| variant | data s | views s | step s | total s | steps / CPU-min | speed-up |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['data_cpu_s']:.3f} | {r['views_cpu_s']:.3f} | "
                     f"{r['step_cpu_s']:.3f} | {r['total_cpu_s']:.3f} | "
                     f"{r['steps_per_cpu_min']:.0f} | {r['speedup_over_before']:.2f}x |")
    if "profile" in out:
        p = out["profile"]
        lines += ["", "The chosen step by component (one profiled step, torch.profiler self CPU "
                      "time; profiling adds per-op overhead, so shares are indicative):", "",
                  "| component | ms | share of the step |", "|---|---|---|"]
        lines += [f"| {c} | {ms:.1f} | {p['shares'][c]:.1%} |" for c, ms in p["ms"].items()]
        lines += ["", f"Around the step: fetching the batch {p['data_ms']} ms, making the two "
                      f"views {p['views_ms']} ms (timed, not profiled)."]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
