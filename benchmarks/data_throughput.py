"""Data-loading throughput: decoding PNGs every epoch vs the uint8 memory-mapped cache, at several
sizes and DataLoader worker counts.

Source: a temporary folder of synthetic 1024 x 1024 8-bit grey PNGs written with Pillow (smooth
anatomy-like structure plus noise, so zlib has about as much work as on an NIH PNG), and optionally
the real 64 px NIH PNGs (MLVICX_DATA_DIR or ../shared/data). Nothing is written outside a temporary
folder except the results JSON.

    python benchmarks/data_throughput.py            # ~2-4 minutes on 2 CPU cores
    python benchmarks/data_throughput.py --n-images 32 --sizes 64

Every loader is run for one untimed warm-up epoch (persistent workers), then timed for ``--epochs``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from mlvicx_core.data.base import CXRDataset
from mlvicx_core.data.cache import CachedDataset

REPO = Path(__file__).resolve().parents[1]


class PngFolder(CXRDataset):
    """Minimal folder-of-PNGs dataset (grey, RGB or RGBA reduced to grey); no labels."""

    def __init__(self, root: Path, image_size: int | None = 224, **kw):
        super().__init__(image_size=image_size, **kw)
        self.root = str(root)
        self.paths = sorted(str(p) for p in Path(root).glob("*.png"))
        self.labels = np.zeros((len(self.paths), 0), np.float32)
        self.patient_ids = np.array([Path(p).stem for p in self.paths], dtype=object)

    def load_image(self, i):
        with Image.open(self.paths[i]) as im:
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0

    def describe(self, i):
        return self.paths[i]


def write_synthetic_pngs(folder: Path, n: int, side: int = 1024, seed: int = 0) -> int:
    """n grey PNGs: bilinearly upsampled 16x16 noise (broad structure) + N(0, 4) grey levels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        coarse = torch.from_numpy(rng.random((1, 1, 16, 16), dtype=np.float32))
        smooth = F.interpolate(coarse, size=(side, side), mode="bilinear")[0, 0].numpy() * 180 + 40
        img = np.clip(smooth + rng.normal(0, 4, (side, side)), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.png"
        Image.fromarray(img, mode="L").save(path)
        total += path.stat().st_size
    return total


def timed_epochs(dataset, workers: int, epochs: int, batch_size: int = 16) -> float:
    """Images per second over ``epochs`` full passes after one warm-up pass."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        persistent_workers=workers > 0, shuffle=False)
    for _ in loader:  # warm-up: worker start-up, page cache, lazy memory maps
        pass
    t0 = time.perf_counter()
    for _ in range(epochs):
        for _ in loader:
            pass
    return epochs * len(dataset) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in the main process (workers always use 1)")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "data_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows, real_rows = [], []
    with tempfile.TemporaryDirectory(prefix="mlvicx-throughput-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        png_bytes = write_synthetic_pngs(tmp / "png", args.n_images)
        print(f"wrote {args.n_images} synthetic 1024x1024 PNGs, "
              f"{png_bytes / args.n_images / 1e3:.0f} kB each, in {time.perf_counter() - t0:.1f} s")
        for size in args.sizes:
            t0 = time.perf_counter()
            CachedDataset(PngFolder(tmp / "png", size), root=tmp / "cache")
            build_s = time.perf_counter() - t0
            for workers in args.workers:
                raw = PngFolder(tmp / "png", size)
                cache = CachedDataset(PngFolder(tmp / "png", size), root=tmp / "cache")
                r_raw = timed_epochs(raw, workers, args.epochs)
                r_cache = timed_epochs(cache, workers, args.epochs)
                rows.append({"size": size, "workers": workers, "raw_png_images_per_s": r_raw,
                             "cache_images_per_s": r_cache, "cache_over_raw": r_cache / r_raw,
                             "cache_build_s": build_s})
                print(f"{size:4d} px  workers={workers}  raw {r_raw:8.1f}/s  "
                      f"cache {r_cache:8.1f}/s  x{r_cache / r_raw:6.1f}  (build {build_s:.1f} s)")

        data_dir = Path(os.environ.get("MLVICX_DATA_DIR", REPO.parent / "shared" / "data"))
        real = data_dir / "nih" / "images-64px"
        if real.is_dir():
            for workers in args.workers:
                raw = PngFolder(real, 64)
                cache = CachedDataset(PngFolder(real, 64), root=tmp / "cache", name="nih64")
                r_raw, r_cache = (timed_epochs(d, workers, args.epochs) for d in (raw, cache))
                real_rows.append({"size": 64, "workers": workers, "n": len(raw),
                                  "raw_png_images_per_s": r_raw, "cache_images_per_s": r_cache,
                                  "cache_over_raw": r_cache / r_raw})
                print(f"real NIH 64 px PNGs ({len(raw)}), workers={workers}: raw {r_raw:.0f}/s, "
                      f"cache {r_cache:.0f}/s (x{r_cache / r_raw:.1f})")
        else:
            print(f"real NIH 64 px PNGs not found under {data_dir}: skipped")

    result = {
        "benchmark": "data_throughput",
        "config": {"n_images": args.n_images, "source": "synthetic 1024x1024 8-bit PNG",
                   "png_kb_each": png_bytes / args.n_images / 1e3, "sizes": args.sizes,
                   "workers": args.workers, "epochs_timed": args.epochs, "batch_size": 16,
                   "main_threads": args.threads, "cpu_count": os.cpu_count(),
                   "torch": torch.__version__, "platform": platform.platform(),
                   "note": "one warm-up epoch untimed; cache built at the view size"},
        "loader": rows, "real_nih_64px": real_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
