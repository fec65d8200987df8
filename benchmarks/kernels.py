"""Kernel benchmark: the VICReg/MLVICX loss and the context bottleneck, today's form vs the new one.

Loss: ``mlvicx_loss`` forward + backward (global and multi-level branch, both views, as the trainer
calls it: ``check_finite=False``) with the covariance term from the D x D matrix (``dxd``, the form
the kit used so far), from the N x N Gram matrix (``gram``) and the automatic choice (``auto``),
at the paper sizes (N = 16/32/64/128 per view, D = 4096) and the teaching size (N = 64, D = 1024).

Context bottleneck: forward + backward of one gate, the plain autograd definition (``plain``:
``ContextBottleneck.fused = False``, the code so far) vs the fused autograd function (``fused``),
at the five tap shapes of the paper preset (224 px, batch 16) and of the teaching preset (64 px,
batch 64).

Timing: one math thread, all variants of a case in one process, alternated round by round (the
order rotates), medians; the ratios (new / today) are the result, absolute seconds depend on the
load of this shared machine. Peak memory: each variant of each case runs once more in its own child
process; the peak resident set is reset just before the forward (Linux ``/proc/self/clear_refs``,
inputs already built) and its growth over the resident set at that moment is reported: the most
memory the forward + backward needed on top of its inputs.

    python benchmarks/kernels.py                 # everything (a few minutes)
    python benchmarks/kernels.py --quick         # fewer rounds, no memory children
    python benchmarks/kernels.py --reps 9

Saves ``benchmarks/results/kernels.json`` and ``kernels.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mlvicx_core.bottleneck import ContextBottleneck  # noqa: E402
from mlvicx_core.loss import choose_covariance_form, mlvicx_loss  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "kernels.json"
TABLE = RESULTS.with_suffix(".md")

LOSS_CASES = [  # (name, N per view, D of both branches)
    ("paper N=16", 16, 4096), ("paper N=32", 32, 4096), ("paper N=64", 64, 4096),
    ("paper N=128", 128, 4096), ("teaching N=64", 64, 1024),
]
LOSS_VARIANTS = ("dxd", "gram", "auto")
GATE_CASES = [  # (preset, level, B, C, H = W)
    ("paper", "stem", 16, 64, 112), ("paper", "layer1", 16, 64, 56),
    ("paper", "layer2", 16, 128, 28), ("paper", "layer3", 16, 256, 14),
    ("paper", "layer4", 16, 512, 7),
    ("teaching", "stem", 64, 64, 32), ("teaching", "layer1", 64, 64, 16),
    ("teaching", "layer2", 64, 128, 8), ("teaching", "layer3", 64, 256, 4),
    ("teaching", "layer4", 64, 512, 2),
]
GATE_VARIANTS = ("plain", "fused")


# -- the work being timed -------------------------------------------------------------------------
def loss_job(n: int, d: int, form: str):
    """A closure running mlvicx_loss forward + backward on fixed (N, D) embeddings."""
    g = torch.Generator().manual_seed(n + d)
    zs = [torch.randn(n, d, generator=g).requires_grad_(True) for _ in range(4)]

    def run():
        out = mlvicx_loss(*zs, check_finite=False, covariance_form=form)["loss"]
        torch.autograd.grad(out, zs)   # no .grad accumulation: the same work every round
    return run


def gate_job(b: int, c: int, hw: int, variant: str):
    """A closure running one context bottleneck forward + backward on a ReLU-like input."""
    torch.manual_seed(c + hw)
    gate = ContextBottleneck(c)
    gate.fused = variant == "fused"
    x = torch.randn(b, c, hw, hw).relu_().requires_grad_(True)
    grad_out = torch.randn(b, c, hw, hw)
    inputs = [x, *gate.parameters()]

    def run():
        torch.autograd.grad(gate(x), inputs, grad_out)
    return run


def job(kind: str, case: tuple, variant: str):
    if kind == "loss":
        _, n, d = case
        return loss_job(n, d, variant)
    _, _, b, c, hw = case
    return gate_job(b, c, hw, variant)


def paired(runs: dict, reps: int) -> dict[str, float]:
    """Median seconds per variant, the variants alternated within every round (order rotating)."""
    names = list(runs)
    for fn in runs.values():   # warm-up: oneDNN primitives, allocator, first-touch of the inputs
        fn()
    times = {k: [] for k in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# -- peak memory, one child process per (case, variant) --------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(kind: str, index: int, variant: str) -> None:
    torch.set_num_threads(1)
    cases = LOSS_CASES if kind == "loss" else GATE_CASES
    fn = job(kind, cases[index], variant)
    try:
        # Linux: writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one,
        # so the peak below is this forward + backward's, not importing torch's
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
    except OSError:   # no procfs: ru_maxrss (KiB), which an earlier peak can mask
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_extra_mb": (peak - base) / 1024}))


def peak_extra_mb(kind: str, index: int, variant: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(index), variant],
                         check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mb"]


# -- report ----------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    m = res["meta"]
    lines = [
        "# Kernels: `benchmarks/kernels.py`",
        "",
        f"torch {m['torch']}, {m['threads']} math thread(s) (`torch.get_num_threads()`), CPU "
        f"capability `{m['cpu_capability']}`, {m['cpu']}, {m['cores']} cores; load average "
        f"{m['load_before']} before, {m['load_after']} after; median of {m['reps']} alternated "
        "rounds. Ratios are the result; seconds depend on the load of the shared machine.",
        "",
        "## Loss: `mlvicx_loss` forward + backward (both branches, both views)",
        "",
        "| case | N | D | auto picks | dxd ms | gram ms | auto ms | gram / dxd | auto / dxd "
        "| peak MB dxd | peak MB gram |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["loss"]:
        t, mem = r["median_s"], r.get("peak_extra_mb", {})
        lines.append(
            f"| {r['case']} | {r['n']} | {r['d']} | {r['auto_form']} | {1e3 * t['dxd']:.1f} "
            f"| {1e3 * t['gram']:.2f} | {1e3 * t['auto']:.2f} | {t['gram'] / t['dxd']:.3f} "
            f"| {t['auto'] / t['dxd']:.3f} | {mem.get('dxd', float('nan')):.0f} "
            f"| {mem.get('gram', float('nan')):.0f} |")
    lines += [
        "",
        "## Context bottleneck: one gate, forward + backward",
        "",
        "| preset | tap | input (B, C, H, W) | plain ms | fused ms | fused / plain "
        "| peak MB plain | peak MB fused |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in res["gate"]:
        t, mem = r["median_s"], r.get("peak_extra_mb", {})
        lines.append(
            f"| {r['preset']} | {r['level']} | {tuple(r['shape'])} | {1e3 * t['plain']:.1f} "
            f"| {1e3 * t['fused']:.1f} | {t['fused'] / t['plain']:.3f} "
            f"| {mem.get('plain', float('nan')):.0f} | {mem.get('fused', float('nan')):.0f} |")
    for preset, tot in res["gate_totals"].items():
        lines.append(f"| {preset} | all five | | {1e3 * tot['plain']:.1f} "
                     f"| {1e3 * tot['fused']:.1f} | {tot['fused'] / tot['plain']:.3f} | | |")
    lines += ["", "Peak MB: the peak resident set during one forward + backward minus the resident "
              "set just before it, inputs built (a child process per cell, glibc malloc). It "
              "includes the first call's one-time set-up (oneDNN primitives, allocator arenas; "
              "about 40 MB, the floor of the small shapes), the same for both variants. The gate's "
              "figure includes its output and the input gradient (two full-size tensors)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=7, help="alternated rounds per case")
    ap.add_argument("--quick", action="store_true", help="3 rounds, no memory children")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "INDEX", "VARIANT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    torch.set_num_threads(1)
    reps = 3 if args.quick else args.reps
    memory = not (args.quick or args.no_memory)
    res: dict = {"meta": {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_before": round(os.getloadavg()[0], 2), "reps": reps,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }, "loss": [], "gate": []}
    print(f"threads {res['meta']['threads']}, capability {res['meta']['cpu_capability']}, "
          f"load {res['meta']['load_before']}", flush=True)

    for i, case in enumerate(LOSS_CASES):
        name, n, d = case
        med = paired({v: job("loss", case, v) for v in LOSS_VARIANTS}, reps)
        row = {"case": name, "n": n, "d": d, "auto_form": choose_covariance_form(n, d),
               "median_s": med}
        if memory:
            row["peak_extra_mb"] = {v: peak_extra_mb("loss", i, v) for v in ("dxd", "gram")}
        res["loss"].append(row)
        print(f"loss {name:14s} dxd {1e3 * med['dxd']:8.1f} ms  gram {1e3 * med['gram']:7.2f} ms "
              f"auto {1e3 * med['auto']:7.2f} ms  gram/dxd {med['gram'] / med['dxd']:.3f}"
              + (f"  peak MB {row['peak_extra_mb']}" if memory else ""), flush=True)

    totals: dict = {}
    for i, case in enumerate(GATE_CASES):
        preset, level, b, c, hw = case
        med = paired({v: job("gate", case, v) for v in GATE_VARIANTS}, reps)
        row = {"preset": preset, "level": level, "shape": [b, c, hw, hw], "median_s": med}
        if memory:
            row["peak_extra_mb"] = {v: peak_extra_mb("gate", i, v) for v in GATE_VARIANTS}
        res["gate"].append(row)
        tot = totals.setdefault(preset, {v: 0.0 for v in GATE_VARIANTS})
        for v in GATE_VARIANTS:
            tot[v] += med[v]
        print(f"gate {preset:8s} {level:6s} {str((b, c, hw, hw)):20s} "
              f"plain {1e3 * med['plain']:7.1f} ms  fused {1e3 * med['fused']:7.1f} ms  "
              f"ratio {med['fused'] / med['plain']:.3f}"
              + (f"  peak MB {row['peak_extra_mb']}" if memory else ""), flush=True)
    res["gate_totals"] = totals
    res["meta"]["load_after"] = round(os.getloadavg()[0], 2)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    TABLE.write_text(markdown(res))
    print(markdown(res))
    print(f"saved {RESULTS} and {TABLE}")


if __name__ == "__main__":
    main()
