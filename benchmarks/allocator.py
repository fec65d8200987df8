"""glibc malloc vs jemalloc for a whole pretraining process: what ``make demo`` gains from the
Makefile's preload.

Each round runs the real command twice, once per allocator, the order alternating::

    python -m mlvicx_core.cli pretrain --preset teaching --set train.max_steps=STEPS
           --set train.threads=1 --set train.out_dir=<fresh temporary folder> ...

under ``OMP_NUM_THREADS=1``, without and with ``LD_PRELOAD=libjemalloc.so.2
MALLOC_CONF=oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1`` (the Makefile's settings:
freed pages are kept instead of returned to the kernel, so the large tensors each step allocates
afresh stop page-faulting). Per process (``os.wait4``): wall time, user and system CPU time, peak
resident memory, minor page faults; and from its ``metrics.jsonl`` the median per-step
``images_per_s`` after the first step (steady state, checkpoint writes excluded). The result is
the ratio of the medians, jemalloc / glibc (below 1 is faster or smaller), saved to
``benchmarks/results/allocator.{json,md}``.

    python benchmarks/allocator.py                       # 3 rounds of 8 steps (~4 min on 2 cores)
    python benchmarks/allocator.py --rounds 5 --steps 12 --preset paper --set data.image_size=224
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "allocator.json"
TABLE = RESULTS.with_suffix(".md")
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
MEASURES = ("wall_s", "user_s", "sys_s", "cpu_s", "maxrss_mb", "minor_faults", "step_images_per_s")


def find_jemalloc() -> str | None:
    """Debian's path, else the first ``libjemalloc.so.2`` that ``ldconfig -p`` lists."""
    debian = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    if os.path.exists(debian):
        return debian
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        return None
    for line in out.splitlines():
        if "libjemalloc.so.2 " in line and "=>" in line:
            path = line.split("=>")[-1].strip()
            if os.path.exists(path):
                return path
    return None


def one_process(env: dict, preset: str, steps: int, overrides: list[str]) -> dict:
    """Run the pretraining command once: its own resource usage (``os.wait4`` on its pid) and its
    steady-state step rate."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "mlvicx_core.cli", "pretrain", "--preset", preset,
               "--set", f"train.max_steps={steps}", "--set", "train.threads=1",
               "--set", f"train.out_dir={tmp}", "--set", "train.run_name=run",
               "--set", "train.progress=false", "--set", "train.tensorboard=false",
               "--set", "train.eval_every=0"]
        for o in overrides:
            cmd += ["--set", o]
        with open(Path(tmp) / "stderr.txt", "w+") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
            _, status, ru = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode:
                err.seek(0)
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                                   f"{err.read()[-2000:]}")
        records = [json.loads(line) for line in
                   (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["images_per_s"] for r in records if "images_per_s" in r][1:]
    return {"wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024,
            "minor_faults": ru.ru_minflt, "step_images_per_s": statistics.median(rates),
            "steps": len(rates) + 1}


def markdown(res: dict) -> str:
    m, r = res["median"], res["jemalloc_over_glibc"]
    lines = [
        "# glibc malloc vs jemalloc, whole pretraining processes: `benchmarks/allocator.py`", "",
        f"torch {res['torch']}, {res['cores']} cores, one math thread (`train.threads=1`, "
        f"`OMP_NUM_THREADS=1`); `mlvicx pretrain --preset {res['preset']}"
        f"{''.join(' --set ' + o for o in res['overrides'])}` for {res['steps']} steps per process "
        "(data rendering, start-up and the final checkpoint included), "
        f"{res['rounds']} rounds, the order alternating; medians. jemalloc: "
        f"`LD_PRELOAD={res['jemalloc']} MALLOC_CONF={res['malloc_conf']}`. "
        f"Load average {res['load_before']} before, {res['load_after']} after; the machine is "
        "shared, so the ratios are the result, not the seconds.", "",
        "| measure | glibc | jemalloc | jemalloc / glibc |", "|---|---:|---:|---:|"]
    names = {"wall_s": "process wall s", "user_s": "user CPU s", "sys_s": "system CPU s",
             "cpu_s": "user + system CPU s", "maxrss_mb": "peak resident MB",
             "minor_faults": "minor page faults",
             "step_images_per_s": "steady-state images/s (higher is faster)"}
    for k in MEASURES:
        lines.append(f"| {names[k]} | {m['glibc'][k]:.2f} | {m['jemalloc'][k]:.2f} | {r[k]:.3f} |")
    walls = "; ".join(f"{n} " + ", ".join(f"{x['wall_s']:.1f}" for x in runs)
                      for n, runs in res["runs"].items())
    lines += ["", f"Process wall seconds per round: {walls}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per process")
    ap.add_argument("--preset", default="teaching")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--report", action="store_true", help="rewrite the table from the saved JSON")
    args = ap.parse_args()
    if args.report:
        TABLE.write_text(markdown(json.loads(RESULTS.read_text())))
        return
    jemalloc = find_jemalloc()
    if jemalloc is None:
        sys.exit("libjemalloc.so.2 not found: `make install-jemalloc` (Debian package "
                 "libjemalloc2)")
    import torch

    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    base.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [base.get("PYTHONPATH")])])
    envs = {"glibc": base, "jemalloc": {**base, "LD_PRELOAD": jemalloc,
                                         "MALLOC_CONF": JEMALLOC_CONF}}
    names = list(envs)
    load_before = round(os.getloadavg()[0], 2)
    runs: dict = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            rec = one_process(envs[name], args.preset, args.steps, args.overrides)
            runs[name].append(rec)
            print(f"round {r} {name:8s}: wall {rec['wall_s']:6.1f} s, user {rec['user_s']:6.1f} s, "
                  f"sys {rec['sys_s']:5.1f} s, faults {rec['minor_faults']:9d}, "
                  f"{rec['step_images_per_s']:6.1f} img/s", flush=True)
    median = {n: {k: statistics.median(x[k] for x in runs[n]) for k in MEASURES} for n in names}
    ratios = {k: median["jemalloc"][k] / median["glibc"][k] for k in MEASURES}
    res = {"torch": torch.__version__, "cores": os.cpu_count(),
           "cpu": platform.processor() or platform.machine(), "preset": args.preset,
           "overrides": args.overrides, "steps": args.steps, "rounds": args.rounds,
           "jemalloc": jemalloc, "malloc_conf": JEMALLOC_CONF, "load_before": load_before,
           "load_after": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M"),
           "runs": runs, "median": median, "jemalloc_over_glibc": ratios}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    TABLE.write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
