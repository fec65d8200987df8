"""The method registry: VICReg and MLVICX through it equal the loss functions, Barlow Twins equals
its published loss written out here, and a method added through the registry trains with the real
trainer with no edit anywhere else."""
from __future__ import annotations

import pytest
import torch
from train_helpers import TinyCXR, simple_augment, tiny_config

from mlvicx_core.config import ConfigError, LossConfig, load_config
from mlvicx_core.loss import invariance, mlvicx_loss, variance, vicreg_loss
from mlvicx_core.methods import METHODS, Method, register_method
from mlvicx_core.methods.barlow_twins import barlow_twins_loss
from mlvicx_core.model import Embeddings
from mlvicx_core.train.metrics_log import read_metrics
from mlvicx_core.train.step import loss_terms
from mlvicx_core.train.trainer import pretrain


def views(n=16, d=24, seed=0, multi=True):
    g = torch.Generator().manual_seed(seed)

    def one():
        return Embeddings(torch.randn(n, d, generator=g),
                          torch.randn(n, d + 8, generator=g) if multi else None)
    return one(), one()


# -- VICReg and MLVICX: the registry entries are the loss functions, bit for bit --------------------
def test_mlvicx_and_vicreg_entries_equal_the_loss_functions():
    w = LossConfig(lam=0.5, sim_coeff=20.0, std_coeff=30.0, cov_coeff=2.0)
    za, zb = views()
    ref = mlvicx_loss(za.global_, zb.global_, za.multi, zb.multi, lam=0.5, sim_coeff=20.0,
                      std_coeff=30.0, cov_coeff=2.0)
    got = METHODS["mlvicx"].loss(za, zb, w)
    assert list(got) == METHODS["mlvicx"].names() == list(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    ref = vicreg_loss(za.global_, zb.global_, sim_coeff=20.0, std_coeff=30.0, cov_coeff=2.0)
    got = METHODS["vicreg"].loss(za, zb, w)
    assert list(got) == ["loss", "global/loss", "global/invariance", "global/variance",
                         "global/covariance"]
    assert torch.equal(got["loss"], ref["loss"])
    for k in ref:
        assert torch.equal(got[f"global/{k}"], ref[k]), k
    # the weights say how the terms make the total
    weights = METHODS["mlvicx"].weights(w)
    total = sum(weights[k] * got_k for k, got_k in METHODS["mlvicx"].loss(za, zb, w).items()
                if k in weights)
    assert total.item() == pytest.approx(METHODS["mlvicx"].loss(za, zb, w)["loss"].item(),
                                         rel=1e-6)


# -- Barlow Twins against its published loss ----------------------------------------------------
def plain_barlow_twins(z_a, z_b, lambd, eps=1e-5):
    """Zbontar et al. 2021, Algorithm 1 and the official code, in float64: BatchNorm1d without
    affine parameters (training mode) on each view, c = bn(z_a)^T bn(z_b) / N, the on-diagonal
    sum of (1 - c_ii)^2 plus lambda times the off-diagonal sum of c_ij^2 (the official flatten
    trick selects the off-diagonal)."""
    n, d = z_a.shape
    bn = torch.nn.BatchNorm1d(d, affine=False, eps=eps).double().train()
    c = bn(z_a.double()).T @ bn(z_b.double()) / n
    on = sum((1 - c[i, i]) ** 2 for i in range(d))
    off = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten().pow(2).sum()
    return on + lambd * off, on, off


def test_barlow_twins_equals_the_published_loss():
    za, zb = views(n=12, d=10, seed=3, multi=False)
    loss, on, off = plain_barlow_twins(za.global_, zb.global_, 0.0051)
    got = barlow_twins_loss(za.global_, zb.global_, 0.0051)
    assert got["loss"].dtype is torch.float32
    assert got["on_diagonal"].item() == pytest.approx(on.item(), rel=1e-5)
    assert got["off_diagonal"].item() == pytest.approx(off.item(), rel=1e-5)
    assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    via = METHODS["barlow_twins"].loss(za, zb, LossConfig(offdiag_coeff=0.0051))
    assert list(via) == METHODS["barlow_twins"].names()
    assert torch.equal(via["global/loss"], got["loss"]) and torch.equal(via["loss"], got["loss"])


def test_barlow_twins_hand_derived_value():
    # bn(z_a) = [[1, 1], [-1, -1]], bn(z_b) = [[1, -1], [-1, 1]] (up to eps): C = [[1, -1], [1, -1]],
    # on-diagonal (1 - 1)^2 + (1 + 1)^2 = 4, off-diagonal (-1)^2 + 1^2 = 2
    z_a = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    z_b = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    got = barlow_twins_loss(z_a, z_b, 0.0051)
    assert got["on_diagonal"].item() == pytest.approx(4.0, abs=1e-4)
    assert got["off_diagonal"].item() == pytest.approx(2.0, abs=1e-4)
    assert got["loss"].item() == pytest.approx(4.0 + 0.0051 * 2.0, abs=1e-4)
    # identical views with decorrelated dimensions: C is the identity, the loss 0
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z)["loss"].item() == pytest.approx(0.0, abs=1e-4)


# -- adding a method through the registry --------------------------------------------------------
def spread_loss(za, zb, cfg, gather=None):
    s = invariance(za.global_, zb.global_)
    v = (variance(za.global_) + variance(zb.global_)) / 2
    total = s + cfg.std_coeff * v
    return {"loss": total, "global/loss": total, "global/invariance": s, "global/spread": v}


@pytest.fixture
def throwaway():
    method = register_method(Method(
        name="throwaway", heads=("global",), terms=("invariance", "spread"), loss=spread_loss,
        weights=lambda cfg: {"global/invariance": 1.0, "global/spread": cfg.std_coeff},
        summary="invariance plus the variance hinge"))
    yield method
    del METHODS["throwaway"]


def test_a_method_added_through_the_registry_trains_for_two_steps(tmp_path, throwaway):
    import matplotlib

    matplotlib.use("Agg")
    from mlvicx_core.viz.training import plot_loss_terms, plot_training

    cfg = tiny_config(tmp_path, **{"model.method": "throwaway", "model.multilevel": False,
                                   "train.max_steps": 2, "train.diag_every": 1,
                                   "loss.std_coeff": 3.0})
    res = pretrain(cfg, dataset=TinyCXR(32), augment=simple_augment, run_dir=tmp_path / "r")
    df = read_metrics(res.run_dir)
    assert list(df["step"]) == [1, 2]
    logged = {c for c in df.columns if "/" in c and not c.startswith(("diag/", "probe/"))}
    assert logged | {"loss"} == set(throwaway.names())
    # the records are the method's own terms: its total is invariance + 3 x spread
    assert df["loss"].tolist() == pytest.approx(
        (df["global/invariance"] + 3.0 * df["global/spread"]).tolist(), rel=1e-5)
    assert df["diag/global/std_min"].notna().all() and not any("multi" in c for c in df.columns)
    assert res.losses == df["loss"].tolist()
    # the figures follow the method: a panel per term, the weights it declares
    assert plot_training(res.run_dir).stat().st_size > 10_000
    fig = plot_loss_terms(res.run_dir)
    assert [ax.get_title() for ax in fig.axes] == ["invariance", "spread", "total loss"]
    assert fig.axes[1].get_legend().get_texts()[0].get_text() == "global x 3"


def test_heads_the_network_lacks_or_does_not_train_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"model.method='mlvicx' trains the multi-level branch: "
                                          r"set model.multilevel=true"):
        pretrain(tiny_config(tmp_path, **{"model.multilevel": False, "train.max_steps": 1}),
                 dataset=TinyCXR(32), augment=simple_augment, run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"model.method='barlow_twins' does not train the "
                                          r"multi-level branch: set model.multilevel=false"):
        pretrain(tiny_config(tmp_path, **{"model.method": "barlow_twins", "train.max_steps": 1}),
                 dataset=TinyCXR(32), augment=simple_augment, run_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match=r"model.method='simclr': expected one of "
                                          r"\['barlow_twins', 'mlvicx', 'vicreg'\]"):
        load_config("teaching", {"model.method": "simclr"})


def test_a_method_returning_other_names_than_it_declares_is_refused():
    za, zb = views(multi=False)
    liar = Method(name="liar", heads=("global",), terms=("a",),
                  loss=lambda za, zb, cfg, gather=None: {"loss": za.global_.sum()},
                  weights=lambda cfg: {"global/a": 1.0})
    with pytest.raises(ValueError, match=r"method 'liar' returned the terms \['loss'\]; it "
                                         r"declares \['loss', 'global/loss', 'global/a'\]"):
        loss_terms(za, zb, LossConfig(), method=liar)
