"""CPU options for the MLVICX training step, measured as paired ratios on this machine.

A step: ``MLVICX(get_preset(preset))``, two views of a batch of grey images, forward of both,
``mlvicx_loss`` (as the trainer calls it: ``check_finite=False``), backward, plain SGD step.
Settings: the paper preset at 224 px, batch 16, and the teaching preset at 64 px, batch 64.

Sections (each can run alone; results are merged into ``benchmarks/results/cpu_options.json``):

``steps``
    In one process, one step of each variant per round, the order rotating, medians (wall and CPU
    time): ``new`` (the kit's defaults: fused context bottleneck, automatic covariance form, one
    math thread), ``no-gates`` (the same network without context bottlenecks), ``old-kernels`` (the plain gate and the D x D covariance, the code before),
    ``channels_last`` (model and images in channels_last), ``bf16-autocast`` (forward under CPU bf16
    autocast; the loss stays float32), ``2-threads``. Plus, in the same process, the loss's and the
    five gates' own forward + backward time at the step's shapes (new and old kernels), as shares of
    the step.
``kernels``
    Only ``new`` vs ``old-kernels``, more alternated rounds (``--reps``): the step-level ratio of
    the kernel work, which the five-variant rounds above measure less precisely on a busy machine.
``compile``
    ``torch.compile`` (inductor, CPU) of the context bottleneck alone at the stem shape (the module
    compiled, which traces the plain definition, and the fused autograd function compiled, vs the
    eager fused and eager plain gate), and of the whole model for the training step's forward +
    backward: first-step time (compilation included; it depends on whether inductor's on-disk
    cache is empty, which is recorded) and steady-state ratio to eager, alternated in one process.
``jemalloc``
    Whole processes, alternated: the same step script under glibc malloc and under Debian's
    ``libjemalloc2`` preloaded with ``MALLOC_CONF=oversize_threshold:0,dirty_decay_ms:-1,
    muzzy_decay_ms:-1`` (keep freed pages instead of returning them to the kernel, so fresh large
    tensors stop page-faulting). Per process: median step wall time, user and system CPU time,
    peak resident memory.
``memory``
    Peak resident memory (``ru_maxrss``) of a whole training process (warm-up + one step, glibc),
    new vs old kernels, alternated.

    python benchmarks/cpu_options.py                        # all sections (~20 min on 2 cores)
    python benchmarks/cpu_options.py --section steps --preset teaching

Ratios are the result (variant / baseline, below 1 is faster); the machine is shared.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
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

from mlvicx_core import MLVICX, get_preset, mlvicx_loss  # noqa: E402
from mlvicx_core.config import LEVELS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cpu_options.json"
TABLE = RESULTS.with_suffix(".md")
SETTINGS = {"paper": (224, 16), "teaching": (64, 64)}   # preset: (image size, batch per view)
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"


# -- the step ------------------------------------------------------------------------------------
def build(preset: str, seed: int = 0):
    torch.manual_seed(seed)
    size, batch = SETTINGS[preset]
    model = MLVICX(get_preset(preset, image_size=size)).train()
    g = torch.Generator().manual_seed(seed)
    views = [torch.rand(batch, 1, size, size, generator=g) for _ in range(2)]
    return model, views


def set_kernels(model, kernels: str) -> str:
    """``new``: fused gates, automatic covariance form; ``old``: plain gates, D x D covariance."""
    for gate in model.gates.values():
        if hasattr(gate, "fused"):
            gate.fused = kernels == "new"
    return "auto" if kernels == "new" else "dxd"


def make_step(model, views, kernels="new", autocast=False, threads=1):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    lam = model.config.lam

    def step():
        torch.set_num_threads(threads)
        form = set_kernels(model, kernels)
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if autocast
               else contextlib.nullcontext())
        with ctx:
            a, b = model(views[0]), model(views[1])
        loss = mlvicx_loss(a.global_, b.global_, a.multi, b.multi, lam=lam, check_finite=False,
                           covariance_form=form)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.set_num_threads(1)
    return step


def paired(runs: dict, reps: int, warmup: int = 1) -> dict:
    """Wall and CPU medians per variant; variants alternate within each round, order rotating."""
    names = list(runs)
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    wall, cpu = {k: [] for k in names}, {k: [] for k in names}
    for r in range(reps):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            runs[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k]),
                "walls": wall[k]} for k in names}


def tap_shapes(model, views) -> dict[str, tuple]:
    with torch.no_grad():
        return {lv: tuple(t.shape) for lv, t in model.taps(views[0]).items()}


def component_times(model, views, reps: int) -> dict:
    """The loss's and the five gates' forward + backward, alone, at the step's shapes (s/step)."""
    from mlvicx_core.bottleneck import ContextBottleneck

    with torch.no_grad():
        a, b = model(views[0]), model(views[1])
    zs = [z.detach().clone().requires_grad_(True) for z in (a.global_, b.global_, a.multi, b.multi)]

    def loss_run(form):
        def run():
            out = mlvicx_loss(*zs, check_finite=False, covariance_form=form)["loss"]
            torch.autograd.grad(out, zs)
        return run

    loss = paired({"new": loss_run("auto"), "old": loss_run("dxd")}, reps)
    gates = {"new": 0.0, "old": 0.0}
    for level, shape in tap_shapes(model, views).items():
        gate = ContextBottleneck(shape[1])
        gate.load_state_dict(model.gates[level].state_dict())
        x = torch.randn(shape).relu_().requires_grad_(True)
        g = torch.randn(shape)

        def gate_run(fused, gate=gate, x=x, g=g):
            def run():
                gate.fused = fused
                torch.autograd.grad(gate(x), [x, *gate.parameters()], g)
            return run

        t = paired({"new": gate_run(True), "old": gate_run(False)}, reps)
        for k in gates:
            gates[k] += 2 * t[k]["wall_s"]   # two views per step
    return {"loss_s": {k: v["wall_s"] for k, v in loss.items()}, "gates_s": gates}


def in_step_gate_shares(res: dict, comp: dict) -> dict:
    """The gates' share of the step: (step - the same step without gates) / step. The no-gates step
    runs the new loss, so the old-kernels step is first reduced by the loss's own old - new time."""
    loss_extra = comp["loss_s"]["old"] - comp["loss_s"]["new"]
    out = {}
    for key, suffix in (("wall_s", ""), ("cpu_s", "_cpu")):
        new, old, none = (res[k][key] for k in ("new", "old-kernels", "no-gates"))
        out["gates_in_step_share_new" + suffix] = (new - none) / new
        out["gates_in_step_share_old" + suffix] = (old - loss_extra - none) / old
    return out


def section_kernels(preset: str, reps: int) -> dict:
    """New vs old kernels only, many alternated rounds: the step-level ratio of the kernel work."""
    model, views = build(preset)
    res = paired({"new": make_step(model, views, "new"), "old": make_step(model, views, "old")},
                 reps)
    return {"steps": res, "reps": reps,
            "new_over_old_wall": res["new"]["wall_s"] / res["old"]["wall_s"],
            "new_over_old_cpu": res["new"]["cpu_s"] / res["old"]["cpu_s"]}


def section_steps(preset: str, reps: int) -> dict:
    model, views = build(preset)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl_views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    # the same network without its gates (other weights copied): new - no-gates = the gates'
    # in-step cost, allocation effects included
    no_cb = MLVICX(get_preset(preset, image_size=SETTINGS[preset][0], context_bottleneck=False))
    no_cb.load_state_dict(model.state_dict(), strict=False)
    runs = {
        "new": make_step(model, views, "new"),
        "no-gates": make_step(no_cb.train(), views, "new"),
        "old-kernels": make_step(model, views, "old"),
        "channels_last": make_step(cl_model, cl_views, "new"),
        "bf16-autocast": make_step(model, views, "new", autocast=True),
        "2-threads": make_step(model, views, "new", threads=2),
    }
    res = paired(runs, reps)
    comp = component_times(model, views, max(3, reps))
    new, old = res["new"]["wall_s"], res["old-kernels"]["wall_s"]
    shares = {**in_step_gate_shares(res, comp),
        "loss_share_new": comp["loss_s"]["new"] / new,
        "loss_share_old": comp["loss_s"]["old"] / old,
        "gates_share_new": comp["gates_s"]["new"] / new,
        "gates_share_old": comp["gates_s"]["old"] / old,
    }
    ratios = {k: res[k]["wall_s"] / new for k in res if k != "new"}
    ratios["new_over_old_kernels"] = new / old
    cpu_ratios = {k: res[k]["cpu_s"] / res["new"]["cpu_s"] for k in res if k != "new"}
    return {"steps": res, "components": comp, "shares": shares, "ratios_wall_vs_new": ratios,
            "ratios_cpu_vs_new": cpu_ratios, "reps": reps}


# -- torch.compile -------------------------------------------------------------------------------
def _inductor_cache_state() -> str:
    """First-step compile time depends on inductor's on-disk cache: record whether it was empty."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        path = Path(cache_dir())
    except Exception:  # private API: moved in some torch versions
        return "unknown"
    if not path.exists() or not any(path.iterdir()):
        return f"empty ({path}): cold compile"
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"populated ({path}, {size / 2**20:.0f} MB): partly warm compile"


def section_compile(preset: str, reps: int) -> dict:
    import torch._dynamo
    from mlvicx_core.bottleneck import ContextBottleneck, ContextGateFunction

    out: dict = {"inductor_cache": _inductor_cache_state()}
    # (a) the gate alone, at the stem tap shape of this setting
    model, views = build(preset)
    shape = tap_shapes(model, views)["stem"]
    gate = ContextBottleneck(shape[1])
    gate.load_state_dict(model.gates["stem"].state_dict())
    x = torch.randn(shape).relu_().requires_grad_(True)
    g = torch.randn(shape)
    plain = copy.deepcopy(gate)
    plain.fused = False
    # the module under torch.compile traces the plain definition (ContextBottleneck.forward);
    # for comparison, the fused autograd function handed to the compiler directly
    compiled_module = torch.compile(copy.deepcopy(gate))
    w = [gate.channel.mlp[0].weight, gate.channel.mlp[2].weight, gate.spatial.conv.weight]
    compiled_function = torch.compile(
        lambda t: ContextGateFunction.apply(t, *w, gate.spatial.conv.padding[0]))

    def run(mod, params):
        return lambda: torch.autograd.grad(mod(x), [x, *params], g)

    variants = {"eager-plain": run(plain, list(plain.parameters())),
                "eager-fused": run(gate, w),
                "compiled-module (plain)": run(compiled_module, list(compiled_module.parameters())),
                "compiled-fused-function": run(compiled_function, w)}
    first = {}
    for name in ("compiled-module (plain)", "compiled-fused-function"):
        t0 = time.perf_counter()
        variants[name]()
        first[name] = time.perf_counter() - t0
    t = paired(variants, max(5, reps))
    out["gate"] = {"shape": list(shape), "first_call_s": first, "median_s":
                   {k: v["wall_s"] for k, v in t.items()},
                   "ratio_vs_eager_plain": {k: v["wall_s"] / t["eager-plain"]["wall_s"]
                                            for k, v in t.items()}}
    torch._dynamo.reset()
    print(f"compile gate {preset}: {out['gate']}", flush=True)

    # (b) the whole model, training step forward + backward (loss and SGD eager)
    eager_model, _ = build(preset)
    comp_model = copy.deepcopy(eager_model)
    comp_model.forward = torch.compile(comp_model.forward)
    step_c = make_step(comp_model, views, "new")
    t0 = time.perf_counter()
    step_c()
    first_step = time.perf_counter() - t0
    print(f"compile model {preset}: first step {first_step:.1f} s", flush=True)
    t = paired({"eager": make_step(eager_model, views, "new"), "compiled": step_c}, reps)
    out["model"] = {"first_step_s": first_step, "median_s": {k: v["wall_s"] for k, v in t.items()},
                    "cpu_s": {k: v["cpu_s"] for k, v in t.items()},
                    "compiled_over_eager": t["compiled"]["wall_s"] / t["eager"]["wall_s"],
                    "compiled_over_eager_cpu": t["compiled"]["cpu_s"] / t["eager"]["cpu_s"],
                    "gates": "plain definition (ContextBottleneck traces it under torch.compile)",
                    "break_even_steps": (
                        first_step / (t["eager"]["wall_s"] - t["compiled"]["wall_s"])
                        if t["compiled"]["wall_s"] < t["eager"]["wall_s"] else None)}
    out["reps"] = reps
    return out


# -- jemalloc: whole processes --------------------------------------------------------------------
def child_step(preset: str, steps: int, kernels: str = "new") -> None:
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    model, views = build(preset)
    step = make_step(model, views, kernels)
    step()                                           # warm-up
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"step_wall_s": statistics.median(walls), "walls": walls,
                      "process_wall_s": time.perf_counter() - t_start, "user_s": ru.ru_utime,
                      "sys_s": ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024,
                      "minor_faults": ru.ru_minflt}))


def section_jemalloc(preset: str, rounds: int, steps: int) -> dict:
    if not os.path.exists(JEMALLOC):
        return {"skipped": f"{JEMALLOC} not found (Debian package libjemalloc2)"}
    base_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    base_env["OMP_NUM_THREADS"] = "1"
    envs = {"glibc": base_env,
            "jemalloc": {**base_env, "LD_PRELOAD": JEMALLOC, "MALLOC_CONF": JEMALLOC_CONF}}
    runs: dict = {k: [] for k in envs}
    names = list(envs)
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child-step", preset, str(steps)],
                                 env=envs[name], check=True, capture_output=True, text=True)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rec["outer_wall_s"] = time.perf_counter() - t0
            runs[name].append(rec)
            print(f"jemalloc {preset} round {r} {name}: step {rec['step_wall_s']:.2f} s, "
                  f"process {rec['outer_wall_s']:.1f} s, user {rec['user_s']:.1f} s, "
                  f"sys {rec['sys_s']:.1f} s, maxrss {rec['maxrss_mb']:.0f} MB", flush=True)

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    keys = ("step_wall_s", "outer_wall_s", "user_s", "sys_s", "maxrss_mb", "minor_faults")
    summary = {name: {k: med(name, k) for k in keys} for name in names}
    ratios = {k: summary["jemalloc"][k] / summary["glibc"][k] for k in keys}
    return {"malloc_conf": JEMALLOC_CONF, "rounds": rounds, "steps_per_process": steps,
            "runs": runs, "median": summary, "jemalloc_over_glibc": ratios}


def section_memory(preset: str, rounds: int) -> dict:
    """Peak resident memory of a whole process (warm-up + one step), new vs old kernels, glibc."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env["OMP_NUM_THREADS"] = "1"
    peaks: dict = {"new": [], "old": []}
    for r in range(rounds):
        for kernels in (["new", "old"] if r % 2 == 0 else ["old", "new"]):
            out = subprocess.run([sys.executable, __file__, "--child-step", preset, "1", kernels],
                                 env=env, check=True, capture_output=True, text=True)
            peaks[kernels].append(json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mb"])
            print(f"memory {preset} {kernels}: {peaks[kernels][-1]:.0f} MB", flush=True)
    med = {k: statistics.median(v) for k, v in peaks.items()}
    return {"maxrss_mb": peaks, "median_mb": med, "new_over_old": med["new"] / med["old"]}


# -- report ----------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    m = res.get("meta", {})
    lines = ["# CPU options for the training step: `benchmarks/cpu_options.py`", "",
             f"torch {m.get('torch')}, CPU capability `{m.get('cpu_capability')}`, "
             f"{m.get('cores')} cores, one math thread unless a row says otherwise; paired "
             "ratios (variant / baseline; below 1 is faster). The machine is shared with other "
             "work: seconds are context, ratios are the result.", ""]
    for preset in SETTINGS:
        size, batch = SETTINGS[preset]
        sec = res.get("steps", {}).get(preset)
        if sec:
            lines += [f"## {preset} preset, {size} px, batch {batch} per view: step variants "
                      f"(median of {sec['reps']} alternated rounds)", "",
                      "| variant | wall s/step | (min - max) | CPU s/step | wall / new | CPU / new |",
                      "|---|---:|---:|---:|---:|---:|"]
            for k, v in sec["steps"].items():
                rw = 1.0 if k == "new" else sec["ratios_wall_vs_new"][k]
                rc = 1.0 if k == "new" else sec["ratios_cpu_vs_new"][k]
                lines.append(f"| {k} | {v['wall_s']:.2f} | {min(v['walls']):.2f} - "
                             f"{max(v['walls']):.2f} | {v['cpu_s']:.2f} | {rw:.3f} | {rc:.3f} |")
            lines += ["", f"Load average {sec.get('load_before')} before, "
                      f"{sec.get('load_after')} after (2 cores). The rounds spread widely on a "
                      "busy machine; the CPU-time ratios are the steadier ones, and the "
                      "many-round new / old comparison below is the precise kernel ratio."]
            s = sec["shares"]
            lines += ["", f"new kernels / old kernels (whole step): "
                      f"{sec['ratios_wall_vs_new']['new_over_old_kernels']:.3f}. "
                      f"Loss share of the step: {100 * s['loss_share_old']:.1f} % old -> "
                      f"{100 * s['loss_share_new']:.1f} % new; context bottlenecks (5 gates x 2 "
                      f"views, forward + backward): {100 * s['gates_share_old']:.1f} % -> "
                      f"{100 * s['gates_share_new']:.1f} % (timed alone)"
                      + (f"; in the step (step - step without gates): "
                         f"{100 * s['gates_in_step_share_old']:.1f} % -> "
                         f"{100 * s['gates_in_step_share_new']:.1f} % wall, "
                         f"{100 * s['gates_in_step_share_old_cpu']:.1f} % -> "
                         f"{100 * s['gates_in_step_share_new_cpu']:.1f} % CPU"
                         if "gates_in_step_share_new" in s else "") + ".", ""]
        kab = res.get("kernels", {}).get(preset)
        if kab:
            lines += [f"## {preset}: new / old kernels, {kab['reps']} alternated rounds", "",
                      f"new / old = {kab['new_over_old_wall']:.3f} wall, "
                      f"{kab['new_over_old_cpu']:.3f} CPU (medians: new "
                      f"{kab['steps']['new']['wall_s']:.2f} s wall, "
                      f"{kab['steps']['new']['cpu_s']:.2f} s CPU; old "
                      f"{kab['steps']['old']['wall_s']:.2f} s wall, "
                      f"{kab['steps']['old']['cpu_s']:.2f} s CPU per step).", ""]
        c = res.get("compile", {}).get(preset)
        if c:
            gt = c["gate"]
            lines += [f"## {preset}: torch.compile (inductor, CPU)", "",
                      f"Inductor cache before the run: {c.get('inductor_cache', 'not recorded')}.",
                      "",
                      f"Gate alone at {tuple(gt['shape'])}, forward + backward, ratio to the eager "
                      "plain gate:", "", "| variant | ms | / eager plain | first call s |",
                      "|---|---:|---:|---:|"]
            for k, v in gt["median_s"].items():
                fc = gt["first_call_s"].get(k)
                lines.append(f"| {k} | {1e3 * v:.1f} | {gt['ratio_vs_eager_plain'][k]:.3f} | "
                             f"{'' if fc is None else f'{fc:.1f}'} |")
            md = c["model"]
            lines += ["", f"Whole model (`torch.compile(model.forward)`, the step's forward + "
                      f"backward; loss and SGD eager): first step {md['first_step_s']:.0f} s "
                      f"(compilation), then compiled / eager = {md['compiled_over_eager']:.3f} "
                      f"wall, {md.get('compiled_over_eager_cpu', float('nan')):.3f} CPU "
                      f"({md['median_s']['compiled']:.2f} vs {md['median_s']['eager']:.2f} "
                      f"s/step); "
                      + (f"compilation pays for itself after ~{md['break_even_steps']:.0f} steps."
                         if md.get("break_even_steps") else "compilation never pays (compiled is "
                         "not faster).") + (f" Gates in the compiled model: {md['gates']}."
                                            if md.get("gates") else ""), ""]
        old = res.get("compile_with_fused_function_in_graph", {}).get(preset)
        if old:
            md = old["model"]
            lines += [f"Earlier run, the fused autograd function traced into the compiled model: "
                      f"first step {md['first_step_s']:.0f} s, compiled / eager = "
                      f"{md['compiled_over_eager']:.3f} wall, "
                      f"{md['compiled_over_eager_cpu']:.3f} CPU.", ""]
        mem = res.get("memory", {}).get(preset)
        if mem:
            lines += [f"## {preset}: peak memory of a training process (warm-up + 1 step, glibc)",
                      "", f"old kernels {mem['median_mb']['old']:.0f} MB, new kernels "
                      f"{mem['median_mb']['new']:.0f} MB: new / old = {mem['new_over_old']:.3f} "
                      f"(median of {len(mem['maxrss_mb']['new'])} processes each).", ""]
        j = res.get("jemalloc", {}).get(preset)
        if j and "median" in j:
            lines += [f"## {preset}: jemalloc vs glibc malloc (whole processes, {j['rounds']} "
                      f"alternated rounds, {j['steps_per_process']} timed steps each)",
                      "", f"`LD_PRELOAD={JEMALLOC} MALLOC_CONF={j['malloc_conf']}`", "",
                      "| measure | glibc | jemalloc | jemalloc / glibc |", "|---|---:|---:|---:|"]
            for k, v in j["jemalloc_over_glibc"].items():
                lines.append(f"| {k} | {j['median']['glibc'][k]:.2f} | "
                             f"{j['median']['jemalloc'][k]:.2f} | {v:.3f} |")
            cpu = {n: statistics.median(r["user_s"] + r["sys_s"] for r in j["runs"][n])
                   for n in ("glibc", "jemalloc")}
            lines.append(f"| user + sys (whole process) | {cpu['glibc']:.2f} | "
                         f"{cpu['jemalloc']:.2f} | {cpu['jemalloc'] / cpu['glibc']:.3f} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--section", action="append",
                    choices=("steps", "kernels", "compile", "jemalloc", "memory"))
    ap.add_argument("--preset", action="append", choices=tuple(SETTINGS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="jemalloc: processes per allocator")
    ap.add_argument("--steps", type=int, default=3, help="jemalloc: timed steps per process")
    ap.add_argument("--child-step", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_step:
        child_step(args.child_step[0], int(args.child_step[1]), *args.child_step[2:])
        return
    torch.set_num_threads(1)
    sections = args.section or ["steps", "kernels", "compile", "jemalloc", "memory"]
    presets = args.preset or list(SETTINGS)
    res = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    res["meta"] = {"torch": torch.__version__, "cpu_capability":
                   torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
                   "cpu": platform.processor() or platform.machine(),
                   "default_threads_here": torch.get_num_threads(), "levels": list(LEVELS)}
    for section in sections:
        for preset in presets:
            load = round(os.getloadavg()[0], 2)
            if section == "steps":
                out = section_steps(preset, args.reps)
            elif section == "compile":
                out = section_compile(preset, args.reps)
            elif section == "kernels":
                out = section_kernels(preset, args.reps)
            elif section == "memory":
                out = section_memory(preset, args.rounds)
            else:
                out = section_jemalloc(preset, args.rounds, args.steps)
            out["load_before"], out["load_after"] = load, round(os.getloadavg()[0], 2)
            out["date"] = time.strftime("%Y-%m-%d %H:%M")
            res.setdefault(section, {})[preset] = out
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(res, indent=2))   # after every part: partial runs count
            TABLE.write_text(markdown(res))
            print(f"{section} {preset}: saved", flush=True)
    print(markdown(res))


if __name__ == "__main__":
    main()
