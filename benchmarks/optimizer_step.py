"""The LARS step at the paper's widths: the kit's in-place update vs the plain form with temporaries.

``mlvicx_core.train.optim.LARS`` builds ``d = g + wd w`` and ``q d`` in the gradient's storage; the
plain form (below, :class:`PlainLARS`: the module docstring's update written with fresh tensors, as
the kit had it before) allocates two temporaries per parameter per step. At the paper preset's
widths (a 4096 x 4096 weight is 64 MB, the multi-level head's 8192 x 4096 weight 128 MB) every
temporary is above glibc's mmap threshold, so each is a fresh mapping that page-faults on first
write. Both optimizers update the paper preset's real parameter tensors (ResNet-18 + both heads,
~115 M parameters) from the same gradients; the order alternates per round, each round gives both a
fresh ``.grad`` per parameter first (as autograd does) and times ``optimizer.step()`` alone.

    python benchmarks/optimizer_step.py               # 7 rounds, one math thread
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python benchmarks/optimizer_step.py

Saves ``benchmarks/results/optimizer_step.{json,md}`` (one row per allocator; a run replaces the
row of its own allocator). The ratio in-place / plain (below 1 is faster) is the result.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mlvicx_core.config import get_preset  # noqa: E402
from mlvicx_core.model import MLVICX  # noqa: E402
from mlvicx_core.train.optim import LARS, param_groups, trust_ratio  # noqa: E402
from step_time import allocator  # noqa: E402  (this folder is sys.path[0] when run as a script)

RESULTS = ROOT / "benchmarks" / "results" / "optimizer_step.json"


class PlainLARS(LARS):
    """The same update with fresh tensors for ``d`` and ``q d`` (the form before the rewrite)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["weight_decay"] != 0:
                    d = d.add(p, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
                    d = d.mul(trust_ratio(p, d, group["trust_coefficient"]))
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset("paper")
    nets = {name: MLVICX(cfg) for name in ("in-place", "plain")}
    nets["plain"].load_state_dict(nets["in-place"].state_dict())
    opts = {"in-place": LARS(param_groups(nets["in-place"], 1e-6), lr=0.05),
            "plain": PlainLARS(param_groups(nets["plain"], 1e-6), lr=0.05)}
    grads = [torch.randn_like(p) * 1e-3 for p in nets["in-place"].parameters()]
    n_params = sum(g.numel() for g in grads)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for r in range(args.rounds + 1):  # round 0: warm-up (momentum buffers allocated)
        order = list(nets) if r % 2 == 0 else list(reversed(nets))
        for name in order:
            for p, g in zip(nets[name].parameters(), grads):
                p.grad = g.clone()  # a fresh gradient, as autograd leaves one
            t0 = time.perf_counter()
            opts[name].step()
            dt = time.perf_counter() - t0
            if r:
                times[name].append(dt)
    same = all(torch.equal(a, b) for a, b in zip(nets["in-place"].parameters(),
                                                 nets["plain"].parameters()))
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"allocator": allocator(), "threads": torch.get_num_threads(), "rounds": args.rounds,
           "parameters_millions": round(n_params / 1e6, 1),
           "plain_s": round(med["plain"], 4), "in_place_s": round(med["in-place"], 4),
           "ratio_in_place_over_plain": round(med["in-place"] / med["plain"], 3),
           "identical_weights": same, "cpu": platform.processor() or platform.machine(),
           "capability": torch.backends.cpu.get_cpu_capability(),
           "load_before": round(os.getloadavg()[0], 2),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(row, indent=1))
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    rows = [x for x in old if x["allocator"] != row["allocator"]] + [row]
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# LARS step at the paper preset's widths: in-place vs plain (`benchmarks/optimizer_step.py`)",
             "", f"{row['parameters_millions']} M parameters (ResNet-18 + global projector + multi-level "
             "head), `optimizer.step()` alone after a fresh `.grad` per parameter, medians over "
             "alternating rounds. Both give identical weights (`identical_weights`).", "",
             "| allocator | threads | rounds | plain s | in-place s | in-place / plain | identical weights | load before | date |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for x in rows:
        lines.append(f"| {x['allocator']} | {x['threads']} | {x['rounds']} | {x['plain_s']} | "
                     f"{x['in_place_s']} | {x['ratio_in_place_over_plain']} | "
                     f"{x['identical_weights']} | {x['load_before']} | {x['date']} |")
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return row


if __name__ == "__main__":
    main()
