"""How hard is the phantom? Per-finding AUROC of three feature sets at one difficulty.

(a) 13 global intensity statistics of the whole image (an audit: findings must not leak through
    global brightness, so this should stay near 0.5);
(b) a randomly initialised ResNet-18 (global-average-pooled 512 features, no training);
(c) the same ResNet-18 trained supervised (multi-label BCE) on the labelled training images.

(a) and (b) are read by a logistic-regression probe (sklearn, standardised features, L2 with
C = 0.1 for every finding; no tuning on the test set); (c) is read from the network's own logits. Training
and test images come from the patient-disjoint ``"train"`` and ``"test"`` splits of
``SyntheticCXR``. Targets at the default difficulty: mean AUROC of (b) <= 0.75, of (c) >= 0.90.
Prints a table and saves ``benchmarks/results/phantom_calibration.json``.

    python benchmarks/phantom_calibration.py                    # default difficulty, 64 px
    python benchmarks/phantom_calibration.py --difficulty 0.7 --no-supervised   # quick probe
"""
from __future__ import annotations

import argparse
import warnings
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from scipy.stats import kurtosis, skew
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from mlvicx_core.data import FINDINGS, SyntheticCXR
from mlvicx_core.model import build_backbone

RESULTS = Path(__file__).parent / "results" / "phantom_calibration.json"


def make_split(split: str, n: int, size: int, difficulty, seed: int):
    ds = SyntheticCXR(length=n, image_size=size, seed=seed, difficulty=difficulty, split=split)
    x = np.stack([ds.render(i)[0] for i in range(n)])
    return x, np.asarray(ds.labels), ds


def global_stats(x: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N, 13): mean, std, 9 percentiles, skewness, kurtosis of each image."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    q = np.percentile(flat, [1, 5, 10, 25, 50, 75, 90, 95, 99], axis=1).T
    return np.column_stack([flat.mean(1), flat.std(1), q, skew(flat, axis=1),
                            kurtosis(flat, axis=1)])


def to_input(x: np.ndarray) -> torch.Tensor:
    """(N, S, S) in [0, 1] -> (N, 3, S, S) roughly standardised, as the ResNet stem expects."""
    t = torch.from_numpy(x)[:, None]
    return ((t - 0.5) / 0.25).expand(-1, 3, -1, -1)


@torch.no_grad()
def cnn_features(net: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    net.eval()
    return torch.cat([net(to_input(x[i:i + batch])) for i in range(0, len(x), batch)]).numpy()


def probe_auroc(f_tr, y_tr, f_te, y_te) -> list[float]:
    sc = StandardScaler().fit(f_tr)
    f_tr, f_te = sc.transform(f_tr), sc.transform(f_te)
    out = []
    for k in range(y_tr.shape[1]):
        clf = LogisticRegression(C=0.1, max_iter=3000)
        clf.fit(f_tr, y_tr[:, k])
        out.append(float(roc_auc_score(y_te[:, k], clf.decision_function(f_te))))
    return out


def train_supervised(x_tr, y_tr, x_te, epochs: int, batch: int, seed: int):
    """ResNet-18 + linear head, BCE, AdamW with a cosine schedule; returns test logits."""
    torch.manual_seed(seed)
    net = nn.Sequential(build_backbone("resnet18", None), nn.Linear(512, y_tr.shape[1]))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x_tr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    xt, yt = to_input(x_tr), torch.from_numpy(y_tr)
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=g)
        tot = 0.0
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            loss = nn.functional.binary_cross_entropy_with_logits(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        print(f"  epoch {ep + 1}/{epochs}: train BCE {tot / len(xt):.3f}", flush=True)
    net.eval()
    with torch.no_grad():
        return torch.cat([net(to_input(x_te[i:i + 256])) for i in range(0, len(x_te), 256)]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--difficulty", default="default")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-supervised", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    diff = args.difficulty if args.difficulty in ("easy", "default", "hard") else float(args.difficulty)
    t0 = time.perf_counter()
    x_tr, y_tr, ds = make_split("train", args.n_train, args.size, diff, args.seed)
    x_te, y_te, _ = make_split("test", args.n_test, args.size, diff, args.seed)
    timings = {"render_s": time.perf_counter() - t0}
    print(f"rendered {len(x_tr)}+{len(x_te)} images at {args.size} px in {timings['render_s']:.1f}s; "
          f"positives train {y_tr.mean(0).round(2)}")
    res: dict[str, list[float]] = {}
    t = time.perf_counter()
    res["global_stats"] = probe_auroc(global_stats(x_tr), y_tr, global_stats(x_te), y_te)
    torch.manual_seed(args.seed)
    rnd = build_backbone("resnet18", None)
    res["random_resnet18"] = probe_auroc(cnn_features(rnd, x_tr), y_tr, cnn_features(rnd, x_te), y_te)
    timings["probes_s"] = time.perf_counter() - t
    if not args.no_supervised:
        t = time.perf_counter()
        logits = train_supervised(x_tr, y_tr, x_te, args.epochs, args.batch, args.seed)
        res["supervised_resnet18"] = [float(roc_auc_score(y_te[:, k], logits[:, k]))
                                      for k in range(len(FINDINGS))]
        timings["supervised_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    print(f"\nAUROC at difficulty {args.difficulty} (level {ds.difficulty.level:.2f}), {args.size} px, "
          f"train {args.n_train} / test {args.n_test} images (patient-disjoint)")
    print(f"{'features':22s}" + "".join(f"{f:>14s}" for f in FINDINGS) + f"{'mean':>8s}")
    for name, aucs in res.items():
        print(f"{name:22s}" + "".join(f"{a:14.3f}" for a in aucs) + f"{np.mean(aucs):8.3f}")
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    out = {
        "difficulty": args.difficulty, "level": ds.difficulty.level, "image_size": args.size,
        "n_train": args.n_train, "n_test": args.n_test, "epochs": args.epochs, "seed": args.seed,
        "findings": list(FINDINGS),
        "auroc": {k: dict(zip(FINDINGS, v)) for k, v in res.items()},
        "mean_auroc": {k: float(np.mean(v)) for k, v in res.items()},
        "targets": {"random_resnet18": "mean <= 0.75", "supervised_resnet18": "mean >= 0.90",
                    "global_stats": "near 0.5"},
        "timings_s": timings, "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor()} ({torch.get_num_threads()} threads)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print("saved", args.out)


if __name__ == "__main__":
    main()
