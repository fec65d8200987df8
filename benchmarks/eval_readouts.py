"""Costs and sanity numbers of the evaluation read-outs, on a small synthetic set (CPU-friendly).

Compares, in one run:
- feature extraction without and with the on-disk cache (ratio);
- AUROC point estimate vs 1000-resample bootstrap (ratio), N x K as in a small NIH test split;
- linear probe vs kNN on the same frozen random-init features (mean test AUROC, time);
- Grad-CAM localisation of the probe head (pointing game, energy inside) next to the uniform-map
  chance levels, on bright discs/bars at random positions (tests/eval_fakes.BlobCXR).

Usage: ``python benchmarks/eval_readouts.py [--n 240] [--image-size 64]``; prints and saves
``benchmarks/results/eval_readouts.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic blob dataset lives with the tests

from eval_fakes import BlobCXR, tiny_model  # noqa: E402
from mlvicx_core.evaluation.embeddings import extract_features  # noqa: E402
from mlvicx_core.evaluation.finetune import Classifier  # noqa: E402
from mlvicx_core.evaluation.gradcam import localisation_eval  # noqa: E402
from mlvicx_core.evaluation.knn import knn_scores, select_k  # noqa: E402
from mlvicx_core.evaluation.metrics import bootstrap_auroc, per_finding_auroc  # noqa: E402
from mlvicx_core.evaluation.probe import fit_linear_probe  # noqa: E402
from mlvicx_core.data.splits import patient_split  # noqa: E402
from mlvicx_core.data.subset import Subset  # noqa: E402
from mlvicx_core.evaluation.trunk import Trunk  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    ds = BlobCXR(n=args.n, image_size=args.image_size, seed=0)
    model = tiny_model(seed=0)
    res: dict = {"n_images": args.n, "image_size": args.image_size, "torch_threads":
                 torch.get_num_threads(), "device": "cpu"}

    with tempfile.TemporaryDirectory() as cache:
        feats, t_cold = timed(lambda: extract_features(model, ds, "trunk", cache_dir=cache))
        _, t_warm = timed(lambda: extract_features(model, ds, "trunk", cache_dir=cache))
    res["extract_s"] = {"uncached": t_cold, "cached": t_warm, "ratio": t_cold / t_warm}

    rng = np.random.default_rng(0)
    y = (rng.random((500, 14)) < 0.1).astype(float)
    s = y + rng.normal(size=y.shape)
    _, t_point = timed(lambda: per_finding_auroc(y, s))
    _, t_boot = timed(lambda: bootstrap_auroc(y, s, n_boot=1000, seed=0))
    res["auroc_500x14_s"] = {"point": t_point, "bootstrap_1000": t_boot, "ratio": t_boot / t_point}

    split = patient_split(feats.patient_ids, (0.55, 0.15, 0.3), seed=0)
    tr, va, te = split["train"], split["val"], split["test"]
    x, lab = feats.x, feats.labels
    probe, t_probe = timed(lambda: fit_linear_probe(x[tr], lab[tr], x[va], lab[va]))
    k, _ = select_k(x[tr], lab[tr], x[va], lab[va])
    knn, t_knn = timed(lambda: knn_scores(x[tr], lab[tr], x[te], k))
    res["random_init_readout"] = {
        "linear_probe": {"mean_auroc": float(np.nanmean(per_finding_auroc(lab[te],
                                                                          probe.scores(x[te])))),
                         "C": probe.C, "fit_s": t_probe},
        "knn": {"mean_auroc": float(np.nanmean(per_finding_auroc(lab[te], knn))), "k": k,
                "score_s": t_knn},
    }

    clf = Classifier(Trunk(model), 2, head=probe.as_torch_head())
    view = Subset(ds, te)
    loc = {}
    for tap in ("layer2", "layer3", "layer4"):
        for f, name in enumerate(ds.findings):
            out, t = timed(lambda: localisation_eval(clf, view, f, tap=tap, max_images=32))
            loc[f"{name}@{tap}"] = {**out, "seconds": t}
    res["gradcam_localisation_random_init_probe"] = loc

    print(json.dumps(res, indent=2))
    out_path = ROOT / "benchmarks" / "results" / "eval_readouts.json"
    out_path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"saved {out_path}")


if __name__ == "__main__":
    main()
