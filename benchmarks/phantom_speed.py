"""Phantom rendering speed on one core: images/s at several sizes, two ways.

``render`` calls the generator directly (numpy (S, S) image + masks + labels); ``dataset`` goes
through ``SyntheticCXR.__getitem__`` (adds the torch tensors of the sample dict). Each setting renders
``--n`` consecutive images (2 per patient, as the dataset default) after a short warm-up; the best of
``--repeats`` runs is kept (the machine may be shared). Target: >= 500 images/s at 128 px.
Prints a table and saves ``benchmarks/results/phantom_speed.json``.

    python benchmarks/phantom_speed.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from mlvicx_core.data import SyntheticCXR, render

RESULTS = Path(__file__).parent / "results" / "phantom_speed.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy's BLAS (the low-pass matmuls) on one core too

    rows = []
    for size in args.sizes:
        ds = SyntheticCXR(length=args.n * (args.repeats + 1), image_size=size, seed=0)
        for name, fn in (("render", lambda i: render(0, i, size, images_per_patient=2)),
                         ("dataset", lambda i: ds[i])):
            for i in range(10):
                fn(i)
            best = float("inf")
            for r in range(args.repeats):
                t = time.perf_counter()
                for i in range(r * args.n, (r + 1) * args.n):
                    fn(i)
                best = min(best, time.perf_counter() - t)
            rows.append({"size": size, "path": name, "images_per_s": args.n / best,
                         "ms_per_image": 1000 * best / args.n})
            print(f"{size:4d} px  {name:8s} {args.n / best:8.0f} images/s  "
                  f"{1000 * best / args.n:6.2f} ms/image", flush=True)
    base = {r["size"]: r["images_per_s"] for r in rows if r["path"] == "render"}
    for r in rows:
        r["ratio_vs_render"] = r["images_per_s"] / base[r["size"]]
    out = {"rows": rows, "threads": 1, "n": args.n, "repeats": args.repeats,
           "target": ">= 500 images/s at 128 px (render)",
           "machine": f"{platform.machine()} {platform.processor()}, {os.cpu_count()} cores (shared)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print("saved", args.out)


if __name__ == "__main__":
    main()
