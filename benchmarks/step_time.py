"""One full MLVICX training step, timed: the kit's paper preset vs the literal multi-level branch vs
VICReg, where the step's time goes, and peak memory.

A step is the kit's own ``mlvicx_core.train.step.train_step`` (two views, forward, loss, finiteness
checks, backward, clipping, the preset's optimizer and schedule), built by ``build_step`` from the
preset's configuration with a variant of ``mlvicx_core/variants.yaml`` applied. For each setting the
variants run in separate child processes (so peak memory is each variant's own), one warm-up step
then ``--repeats`` timed steps. Each child reports the math threads it really ran with
(``torch.get_num_threads()`` inside the child, after ``--threads`` was applied) and the allocator it
ran under (jemalloc when ``LD_PRELOAD`` names it, as ``make bench`` does); peak memory is the
child's peak resident set over the warm-up and the timed steps, reset (``/proc/self/clear_refs``)
after the model and the inputs were built so that importing torch does not mask it (CUDA:
``max_memory_allocated``).

At each ``--profile`` setting the ``mlvicx`` child then profiles one more step with
``torch.profiler`` and splits its CPU time by component: forward ops by the module they ran in
(forward hooks open a ``record_function`` range per component), backward ops by the forward op
that created them (the autograd sequence number), the loss by ``loss_terms``, the optimizer by
``Optimizer.step`` / ``zero_grad``; ``other`` is the rest of the step (gradient accumulation
into ``.grad``, clipping, finiteness checks). Profiling adds a per-op overhead, so the shares are
indicative; the timed steps above run unprofiled.

    python benchmarks/step_time.py --threads 1     # all settings, one math thread (the saved run)
    python benchmarks/step_time.py --quick         # teaching preset only
    python benchmarks/step_time.py --setting paper-224px-b16 --repeats 2

Ratios measured in one run are the result; seconds depend on the load of the (shared) machine:
under load wall time inflates, CPU time (``time.process_time``) much less, so both are given.
Saved to ``benchmarks/results/step_time.{json,md}``; a partial run (``--quick``, ``--setting``)
replaces the settings it ran and keeps the others, each row with its own threads and date.
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
from collections import defaultdict
from pathlib import Path

import torch

from mlvicx_core import MLVICX, load_config
from mlvicx_core.config import VARIANTS as METHOD_VARIANTS
from mlvicx_core.devices import select_device
from mlvicx_core.train import step as step_module
from mlvicx_core.train.step import build_step, train_step

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
COMPONENTS = ("trunk", "context bottlenecks", "multi-level fusion", "multi-level head",
              "global projector", "loss", "optimizer", "other")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elif dev.type == "mps":
        torch.mps.synchronize()


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what ``platform`` says: the saved seconds, and
    whether bf16 pays, depend on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def allocator() -> str:
    return "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "system malloc"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset the peak resident set to the current one (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build(preset: str, size: int, batch: int, variant: str, threads: int | None):
    if threads:
        torch.set_num_threads(threads)
    dev = select_device()
    torch.manual_seed(0)
    cfg = load_config(preset, {**VARIANTS[variant], "data.view_size": size,
                               "train.batch_size": batch})
    model = MLVICX(cfg.model).to(dev).train()
    state = build_step(cfg, model, dev, steps_per_epoch=1000)
    g = torch.Generator().manual_seed(0)
    view_a = torch.rand(batch, 1, size, size, generator=g).to(dev)
    view_b = torch.rand(batch, 1, size, size, generator=g).to(dev)
    return dev, model, state, view_a, view_b


def run_one(preset: str, size: int, batch: int, variant: str, repeats: int,
            threads: int | None = None, with_profile: bool = False) -> dict:
    """Runs in a child process: times ``repeats`` steps after one warm-up; then, if asked, profiles
    one more step (after the peak memory was read)."""
    dev, model, state, view_a, view_b = build(preset, size, batch, variant, threads)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    procfs = _reset_peak()
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
        peak_mb, peak_kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    elif procfs:
        peak_mb, peak_kind = _status_kb("VmHWM") / 1024, "peak RSS of the steps (VmHWM reset)"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        peak_kind = "process peak RSS (ru_maxrss, includes the import)"
    med = statistics.median(times)
    out = {"median_s": med, "images_per_s": 2 * batch / med, "peak_mb": peak_mb,
           "median_cpu_s": statistics.median(cpu_times), "peak_kind": peak_kind,
           "times_s": times, "cpu_times_s": cpu_times, "device": str(dev),
           "threads": torch.get_num_threads(), "allocator": allocator()}
    if with_profile:
        out["profile"] = profile_step(model, state, view_a, view_b)
    return out


# -- the profiler split ----------------------------------------------------------------------------
def _component_modules(model: MLVICX) -> list[tuple[torch.nn.Module, str]]:
    """(module, component) pairs; the innermost range an op runs in names its component."""
    pairs: list[tuple[torch.nn.Module, str]] = [(model, "trunk")]  # normalisation, pooling
    pairs += [(m, "trunk") for _, m in model.backbone.named_children()]
    pairs += [(g, "context bottlenecks") for g in model.gates.values()]
    pairs.append((model.projector, "global projector"))
    if model.fusion is not None:
        pairs += [(model.fusion, "multi-level fusion"), (model.ml_projector, "multi-level head")]
    return pairs


def _install_ranges(model: MLVICX) -> None:
    from torch.profiler import record_function

    def pre(name):
        def hook(module, args):
            module._bench_range = record_function(f"component::{name}")
            module._bench_range.__enter__()
        return hook

    def post(module, args, out):
        module._bench_range.__exit__(None, None, None)

    for module, name in _component_modules(model):
        module.register_forward_pre_hook(pre(name))
        module.register_forward_hook(post)
    plain_loss = step_module.loss_terms

    def loss_terms(*args, **kwargs):
        with record_function("component::loss"):
            return plain_loss(*args, **kwargs)

    step_module.loss_terms = loss_terms  # train_step looks it up in its module


def _range_component(name: str) -> str | None:
    if name.startswith("component::"):
        return name[len("component::"):]
    if name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
        return "optimizer"
    return None


def split_events(events) -> dict[str, float]:
    """Self CPU time (ms) of every profiler event, summed by component (see the module doc)."""
    def ancestors(e):
        while e is not None:
            yield e
            e = e.cpu_parent

    def forward_component(e) -> str:
        for a in ancestors(e):
            c = _range_component(a.name)
            if c is not None:
                return c
        return "other"

    seq_component: dict[int, str] = {}
    for e in events:
        if e.sequence_nr >= 0 and not any(a.name.startswith("autograd::engine::evaluate_function")
                                          for a in ancestors(e)):
            seq_component.setdefault(e.sequence_nr, forward_component(e))
    out: dict[str, float] = defaultdict(float)
    for e in events:
        backward = next((a for a in ancestors(e)
                         if a.name.startswith("autograd::engine::evaluate_function")), None)
        if backward is not None:
            c = seq_component.get(backward.sequence_nr, "other")
        else:
            c = forward_component(e)
        out[c] += e.self_cpu_time_total / 1000
    return dict(out)


def profile_step(model: MLVICX, state, view_a, view_b) -> dict:
    """One more step of a warmed-up ``state``, profiled and split by component."""
    from torch.profiler import ProfilerActivity, profile

    _install_ranges(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        train_step(state, view_a, view_b)
        wall = time.perf_counter() - t0
    ms = split_events(prof.events())
    total = sum(ms.values())
    return {"ms": {c: ms.get(c, 0.0) for c in COMPONENTS}, "total_ms": total,
            "shares": {c: ms.get(c, 0.0) / total for c in COMPONENTS},
            "profiled_step_wall_s": wall, "threads": torch.get_num_threads(),
            "device": str(state.device), "allocator": allocator()}


# -- the parent ------------------------------------------------------------------------------------
def child(args_list: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args_list], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


RATIOS = {  # name: (numerator variant, denominator variant, measure)
    "literal_over_pooled": ("mlvicx-literal", "mlvicx", "median_s"),
    "literal_over_pooled_cpu": ("mlvicx-literal", "mlvicx", "median_cpu_s"),
    "pooled_over_vicreg": ("mlvicx", "vicreg", "median_s"),
    "pooled_over_vicreg_cpu": ("mlvicx", "vicreg", "median_cpu_s"),
    "pooled_over_literal_memory": ("mlvicx", "mlvicx-literal", "peak_mb"),
    "pooled_over_vicreg_memory": ("mlvicx", "vicreg", "peak_mb"),
    "branch_only_over_vicreg_cpu": ("mlvicx-no-cb", "vicreg", "median_cpu_s"),
}


def ratios(row: dict) -> dict:
    """The ratios of the variants that ran (a ratio needs both of its variants)."""
    return {k: row[a][m] / row[b][m] for k, (a, b, m) in RATIOS.items() if a in row and b in row}


def setting_of(key: str) -> str:
    """``"paper-224px-b16 (jemalloc)"`` -> ``"paper-224px-b16"``."""
    return key.split(" (")[0]


def row_key(name: str) -> str:
    """A setting's key in the saved file: its name, plus the allocator where it is not the
    system's (``make bench`` preloads jemalloc), so runs under both allocators are kept side by side."""
    alloc = allocator()
    return name if alloc == "system malloc" else f"{name} ({alloc})"


def save(results: dict, partial: bool) -> None:
    """Write the JSON and the table; a partial run keeps the saved settings it did not run, and
    every run keeps the saved rows measured under another allocator."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = dict(results)
    if RESULTS.exists():
        old = json.loads(RESULTS.read_text())
        # a partial run keeps the other settings; every run keeps the rows of another allocator;
        # only rows that say their threads are kept
        keep = {k: v for k, v in old.get("settings", {}).items()
                if "threads" in v and k not in results["settings"]
                and (partial or v.get("allocator") != allocator())}
        merged = {**keep, **results["settings"]}
        names = [s[0] for s in SETTINGS]
        out["settings"] = {k: merged[k] for k in sorted(
            merged, key=lambda k: (names.index(setting_of(k)) if setting_of(k) in names else 99, k))}
    RESULTS.write_text(json.dumps(out, indent=2))
    TABLE.write_text(markdown(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="teaching preset only")
    ap.add_argument("--threads", type=int, default=0, help="math threads (default: torch's)")
    ap.add_argument("--setting", action="append", default=[], choices=[s[0] for s in SETTINGS],
                    help="run only these settings (repeatable); saved numbers of others are kept")
    ap.add_argument("--profile", action="append", default=None,
                    choices=[s[0] for s in SETTINGS] + ["none"],
                    help="settings whose mlvicx step is profiled (default: paper-224px-b16 when "
                         "it runs; --profile none for no profile)")
    ap.add_argument("--variant", action="append", default=[], choices=list(VARIANTS),
                    help="run only these variants (repeatable; default: all)")
    ap.add_argument("--report", action="store_true", help="rewrite the table from the saved JSON")
    ap.add_argument("--child", nargs=4, metavar=("PRESET", "SIZE", "BATCH", "VARIANT"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report:
        TABLE.write_text(markdown(json.loads(RESULTS.read_text())))
        return
    if args.child:
        preset, size, batch, variant = args.child
        print(json.dumps(run_one(preset, int(size), int(batch), variant, args.repeats,
                                 args.threads, args.child_profile)))
        return

    settings = SETTINGS[:1] if args.quick else SETTINGS
    if args.setting:
        settings = [s for s in SETTINGS if s[0] in args.setting]
    profiled = args.profile if args.profile is not None else ["paper-224px-b16"]
    results: dict = {"torch": torch.__version__,
                     "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                     "cores": os.cpu_count(), "machine": cpu_name(), "settings": {}}
    for name, preset, size, batch in settings:
        row: dict = {}
        load = round(os.getloadavg()[0], 2)
        for variant in args.variant or VARIANTS:
            profile = ["--child-profile"] if variant == "mlvicx" and name in profiled else []
            row[variant] = r = child(["--repeats", str(args.repeats), "--threads",
                                      str(args.threads), *profile, "--child", preset, str(size),
                                      str(batch), variant])
            if "profile" in r:
                row["profile"] = r.pop("profile")
            print(f"{name:20s} {variant:15s} {r['median_s']:8.3f} s/step "
                  f"(cpu {r['median_cpu_s']:7.3f} s) {r['images_per_s']:8.1f} img/s  "
                  f"peak {r['peak_mb']:8.0f} MB  threads {r['threads']}", flush=True)
        row["ratios"] = ratios(row)
        print(f"{name:20s} ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in row["ratios"].items()))
        if "profile" in row:
            p = row["profile"]
            print(f"{name:20s} profile: " + ", ".join(f"{c} {100 * s:.1f} %"
                                                      for c, s in p["shares"].items()))
        used = {row[v]["threads"] for v in VARIANTS if v in row} | (
            {row["profile"]["threads"]} if "profile" in row else set())
        row.update(threads=sorted(used), allocator=row["mlvicx"]["allocator"],
                   device=row["mlvicx"]["device"], repeats=args.repeats,
                   load_before=load, load_after=round(os.getloadavg()[0], 2),
                   date=time.strftime("%Y-%m-%d %H:%M"))
        results["settings"][row_key(name)] = row
        save(results, partial=bool(args.quick or args.setting))  # after every setting
    print(f"saved {RESULTS} and {TABLE}")


def markdown(results: dict) -> str:
    """The saved numbers as Markdown tables (what the README links to)."""
    rows = results["settings"]
    threads = sorted({t for row in rows.values() for t in row["threads"]})
    devices = sorted({row["device"] for row in rows.values()})
    lines = [
        f"# One training step: `benchmarks/step_time.py` on {', '.join(devices)}", "",
        f"{results['machine']}, torch {results['torch']}, CPU capability "
        f"`{results['cpu_capability']}`, {results['cores']} cores; math threads used "
        "(`torch.get_num_threads()` in each child): "
        f"{', '.join(map(str, threads))}. Medians of the timed steps after one warm-up, each "
        "variant in its own process. The machine is shared: ratios measured in one run are the "
        "result, seconds are context (under load wall time inflates, CPU time much less).", "",
        "## Ratios", "",
        "| setting | threads | literal / kit (wall) | literal / kit (CPU) | kit / VICReg (wall) "
        "| kit / VICReg (CPU) | kit / literal (memory) | kit / VICReg (memory) "
        "| branch without CB / VICReg (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = ("literal_over_pooled", "literal_over_pooled_cpu", "pooled_over_vicreg",
             "pooled_over_vicreg_cpu", "pooled_over_literal_memory", "pooled_over_vicreg_memory",
             "branch_only_over_vicreg_cpu")
    for name, row in rows.items():
        r = row["ratios"]
        cells = " | ".join(f"{r[k]:.2f}" if k in r else "not run" for k in order)
        lines.append(f"| {name} | {', '.join(map(str, row['threads']))} | {cells} |")
    lines += ["", "`kit` is the `mlvicx` variant (the pooled multi-level branch, the fused context "
              "bottleneck, the automatic covariance form); `literal` the same network with the "
              "multi-level branch computed as literally defined; `VICReg` the `vicreg` variant; "
              "`branch without CB` the `mlvicx-no-cb` variant.", "",
              "## Where the kit's step goes (torch.profiler, one step, CPU self time)", ""]
    profiled = {n: row["profile"] for n, row in rows.items() if "profile" in row}
    if profiled:
        lines += ["| component | " + " | ".join(profiled) + " |",
                  "|---|" + "---:|" * len(profiled)]
        for c in COMPONENTS:
            lines.append(f"| {c} | " + " | ".join(f"{100 * p['shares'][c]:.1f} %"
                                                  for p in profiled.values()) + " |")
        lines += ["", "Forward ops by the module they ran in, backward ops by the forward op that "
                  "created them; `other`: gradient accumulation, clipping, finiteness checks. The "
                  "profiler's per-op overhead inflates small ops, so the shares are indicative.",
                  ""]
    else:
        lines += ["not profiled in this run", ""]
    lines += ["## Seconds and memory (context)", "",
              "| setting | variant | s/step (wall) | CPU s/step | images/s | peak MB | threads "
              "| timed steps | allocator | date | load before / after |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for name, row in rows.items():
        for variant in (v for v in VARIANTS if v in row):
            r = row[variant]
            lines.append(f"| {name} | {variant} | {r['median_s']:.3f} | {r['median_cpu_s']:.3f} "
                         f"| {r['images_per_s']:.1f} | {r['peak_mb']:.0f} | {r['threads']} "
                         f"| {len(r['times_s'])} | {r['allocator']} | {row['date']} "
                         f"| {row['load_before']} / {row['load_after']} |")
    kinds = sorted({row[v]["peak_kind"] for row in rows.values() for v in VARIANTS if v in row})
    lines += ["", f"Peak memory: {'; '.join(kinds)}."]
    missing = [s[0] for s in SETTINGS if s[0] not in {setting_of(k) for k in rows}]
    if missing:
        lines.append(f"Not run for this file: {', '.join(missing)} (`--setting NAME` adds it).")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
