"""Grad-CAM: evidence at a known place is found there; every tap works; hooks never accumulate."""
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_fakes import BlobCXR, tiny_model
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from mlvicx_core.evaluation.finetune import Classifier
from mlvicx_core.evaluation.gradcam import (
    SimilarityTarget,
    cam_maps,
    finding_cams,
    localisation_eval,
    similarity_cams,
)
from mlvicx_core.evaluation.localisation import energy_inside, pointing_hit
from mlvicx_core.evaluation.trunk import Trunk


class TwoEvidence(nn.Module):
    """Channel c of the input is the evidence for class c: conv1x1 (identity), ReLU, GAP, linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(2, 2, 1, bias=False)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).mean(dim=(2, 3)))


def test_gradcam_lands_on_the_evidence_of_the_chosen_class():
    x = torch.zeros(1, 2, 32, 32)
    x[0, 0, 4:10, 20:26] = 1.0   # evidence for class 0: top right
    x[0, 1, 22:28, 3:9] = 1.0    # evidence for class 1: bottom left
    region = [np.zeros((32, 32), bool), np.zeros((32, 32), bool)]
    region[0][4:10, 20:26] = True
    region[1][22:28, 3:9] = True
    model = TwoEvidence()
    for c in (0, 1):
        cam = cam_maps(model, x, model.features, [ClassifierOutputTarget(c)])[0]
        assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
        assert pointing_hit(cam, region[c]) == 1.0
        assert pointing_hit(cam, region[1 - c]) == 0.0
        assert energy_inside(cam, region[c]) > 0.9


def test_similarity_target_lands_on_the_evidence_for_the_reference_direction():
    """Embedding = pooled channels (a, b); the reference (1, 0) makes channel 0 the evidence."""
    model = TwoEvidence()
    model.head = nn.Identity()  # the embedding is the pooled feature vector itself
    x = torch.zeros(1, 2, 32, 32)
    x[0, 0, 4:10, 20:26] = 1.0
    x[0, 1, 22:28, 3:9] = 1.0
    region = np.zeros((32, 32), bool)
    region[4:10, 20:26] = True
    for ref, expect in ((torch.tensor([1.0, 0.0]), 1.0), (torch.tensor([0.0, 1.0]), 0.0)):
        cam = cam_maps(model, x, model.features, [SimilarityTarget(ref)])[0]
        assert pointing_hit(cam, region) == expect


def grad_cam_by_hand(net, images, layer, score):
    """Grad-CAM written out with autograd, in float64: the layer's output A (a forward hook) and
    d score / dA; weights = spatial mean of the gradient; ReLU(sum_k w_k A_k), min-max scaled per
    image (x - min) / (1e-7 + max), upsampled bilinearly (half-pixel centres) to the image size,
    then ReLU and min-max again (pytorch-grad-cam scales each layer's map before resizing and the
    mean over layers after)."""
    net.eval()
    seen = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        out = net(images.detach().clone().requires_grad_(True))
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score(out).sum(), seen[0])
    act, grad = seen[0].detach().double(), grad.double()
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1))

    def minmax(m):
        m = m - m.amin(dim=(1, 2), keepdim=True)
        return m / (1e-7 + m.amax(dim=(1, 2), keepdim=True))
    cam = F.interpolate(minmax(cam)[:, None], size=tuple(images.shape[-2:]), mode="bilinear",
                        align_corners=False)[:, 0]
    return minmax(torch.relu(cam)).numpy()


@pytest.mark.parametrize("tap", ["stem", "layer1", "layer2", "layer3", "layer4"])
def test_every_tap_for_heads_and_for_the_ssl_encoder(tap):
    """Values against :func:`grad_cam_by_hand`: finding 1's logit of the classifier, and the cosine
    similarity of the projector output to a random direction (a reference equal to an image's own
    embedding has a vanishing gradient there, its map is round-off: shapes only)."""
    model = tiny_model()
    images = torch.rand(2, 1, 64, 64)
    clf = Classifier(Trunk(model), 2)
    maps = finding_cams(clf, images, 1, tap)
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    np.testing.assert_allclose(
        maps, grad_cam_by_hand(clf, images, clf.trunk.gates[tap], lambda logits: logits[:, 1]),
        atol=1e-5)
    with torch.no_grad():
        ref = model(images[:1]).global_[0]
    sim = similarity_cams(model, images, ref, tap)
    assert sim.shape == (2, 64, 64) and np.isfinite(sim).all()
    direction = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    sim = similarity_cams(model, images, direction, tap)

    def cosine(out):
        z = out.global_
        return (z @ direction) / (z.norm(dim=1) * direction.norm())
    np.testing.assert_allclose(sim, grad_cam_by_hand(model, images, model.gates[tap], cosine),
                               atol=1e-5)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert sum(len(m._forward_hooks) for m in clf.modules()) == 0


def test_no_hook_or_memory_growth_over_many_images():
    model = TwoEvidence()
    x = torch.rand(4, 2, 32, 32)
    targets = [ClassifierOutputTarget(0)] * 4
    for _ in range(10):  # warm-up: allocator caches, lazy imports
        cam_maps(model, x, model.features, targets)
    tracemalloc.start()
    cam_maps(model, x, model.features, targets)
    base, _ = tracemalloc.get_traced_memory()
    for _ in range(150):  # 600 images
        cam_maps(model, x, model.features, targets)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(model.features._forward_hooks) == 0
    assert current - base < 256 * 1024, f"grew by {(current - base) / 1024:.0f} KiB"


def test_overlay_respects_the_intensity_contract():
    from mlvicx_core.viz.figures import overlay

    img = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    cam = np.zeros((4, 4), np.float32)
    out = overlay(img, cam, alpha=0.0)
    np.testing.assert_allclose(out, np.repeat(img[..., None], 3, 2))  # grey kept: 0 black, 1 white
    out = overlay(img[None], cam, alpha=0.5)
    assert out.shape == (4, 4, 3) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
        overlay(img * 255, cam)


def test_localisation_eval_with_masks_and_boxes():
    """Scores recomputed plainly from the kit's maps of the positives (3 of the 12 blobs, all
    within max_images=4), picked here from the labels and the disc centres: pointing = share of a
    map's maximal pixels within ``tolerance`` of the region (brute-force distances), energy =
    sum(map * region) / sum(map); chance = the region's share of the image, hand-derived: a disc of
    radius 4 (49 lattice points within 4 of its centre, wholly inside the image) and its 9 x 9
    bounding box, in 32 x 32. With tolerance 9 one plateau is half inside: pointing is neither 0
    nor 1."""
    ds = BlobCXR(n=12, image_size=32)
    clf = Classifier(Trunk(tiny_model()), 2)
    res = localisation_eval(clf, ds, 0, tap="layer2", max_images=4)
    assert res["n"] == min(4, int(ds.labels[:, 0].sum()))
    assert 0 <= res["pointing_game"] <= 1 and 0 <= res["energy_inside"] <= 1
    # chance for a uniform map = region share: a disc of radius 4 in 32x32 (~49 px / 1024)
    assert 0.03 < res["chance_energy"] < 0.07
    boxes = localisation_eval(clf, BlobCXR(n=12, image_size=32, masks=False), 0, tap="layer2",
                              max_images=4)
    assert boxes["n"] == res["n"]
    assert boxes["chance_energy"] > res["chance_energy"]  # a box contains its disc
    near = localisation_eval(clf, ds, 0, tap="layer2", max_images=4, tolerance=9.0)

    picked = np.flatnonzero(ds.labels[:, 0] == 1)[:4]
    assert len(picked) == res["n"] == 3
    maps = finding_cams(clf, torch.stack([ds[int(i)]["image"] for i in picked]), 0, "layer2")
    assert all(m.max() > m.min() for m in maps)  # no constant map: every one is scored
    yy, xx = np.mgrid[:32, :32]
    for got, box, tolerance in ((res, False, 0.0), (boxes, True, 0.0), (near, False, 9.0)):
        hits, energy, reach = [], [], []
        for m, i in zip(maps, picked):
            cy, cx = ds.centres[i]
            region = ((abs(yy - cy) <= 4) & (abs(xx - cx) <= 4) if box
                      else (yy - cy) ** 2 + (xx - cx) ** 2 <= 16)
            assert region.sum() == (81 if box else 49)
            ry, rx = np.nonzero(region)
            dist = np.sqrt((yy[..., None] - ry) ** 2 + (xx[..., None] - rx) ** 2).min(axis=-1)
            hits.append((dist <= tolerance)[m == m.max()].mean())
            reach.append((dist <= tolerance).mean())
            energy.append(m[region].sum() / m.sum())
        assert got["n"] == got["n_energy"] == len(picked) and got["n_constant"] == 0
        assert got["pointing_game"] == pytest.approx(np.mean(hits), abs=1e-12)
        assert got["energy_inside"] == pytest.approx(np.mean(energy), rel=1e-6)
        assert got["chance_pointing"] == pytest.approx(np.mean(reach), abs=1e-12)
        assert got["chance_energy"] == pytest.approx((81 if box else 49) / 1024, abs=1e-12)
    assert 0 < near["pointing_game"] < 1 and near["chance_pointing"] > res["chance_pointing"]


def test_localisation_eval_counts_constant_maps_apart_and_keeps_chance_on_the_scored_images(
        monkeypatch):
    """Issue 12 item 16: a constant (e.g. all-zero) Grad-CAM map is undefined, reported in
    ``n_constant``, and the chance levels are computed on the images actually scored."""
    from scipy.ndimage import distance_transform_edt

    from mlvicx_core.evaluation import gradcam

    ds = BlobCXR(n=40, image_size=32)
    positives = [i for i in range(40) if ds.labels[i, 0] == 1]
    masks = [ds[i]["mask"][0].numpy() for i in positives]

    def fake_cams(classifier, images, finding, tap):  # zero for even calls' images, else a peak
        out = np.zeros((len(images), 32, 32), np.float32)
        for j, img in enumerate(images):
            k = next(n for n, i in enumerate(positives) if torch.equal(ds[i]["image"], img))
            if k % 2:
                y, x = np.argwhere(masks[k])[0]
                out[j, y, x] = 1.0
        return out
    monkeypatch.setattr(gradcam, "finding_cams", fake_cams)
    res = localisation_eval(None, ds, 0, tolerance=2.0)
    odd = [m for k, m in enumerate(masks) if k % 2]
    assert res["n_constant"] == len(masks) - len(odd) and res["n"] == len(odd) >= 2
    assert res["pointing_game"] == 1.0 and res["energy_inside"] == 1.0
    assert res["chance_pointing"] == pytest.approx(
        np.mean([(distance_transform_edt(~m) <= 2.0).mean() for m in odd]))
    assert res["chance_energy"] == pytest.approx(np.mean([m.mean() for m in odd]))
