"""The VICReg / MLVICX loss against hand-derived values and a plain reference (METHOD.md section 3)."""
import math

import pytest
import torch

from mlvicx_core import covariance, invariance, mlvicx_loss, variance, vicreg_loss
from mlvicx_core import loss as loss_module
from mlvicx_core.loss import choose_covariance_form


def reference_covariance(z):
    """``1/D sum_{i != j} C_ij^2`` in float64 from explicit loops over dimension pairs (a tensor, so
    it can be differentiated; the sums run in plain loop order)."""
    z = z.double()
    n, d = z.shape
    zc = z - z.mean(0)
    total = zc.sum() * 0.0  # zero, part of the graph (D = 1 has no pair)
    for i in range(d):
        for j in range(d):
            if i != j:
                cij = (zc[:, i] * zc[:, j]).sum() / (n - 1)
                total = total + cij**2
    return total / d


def reference_vicreg(za, zb, sim=25.0, std=25.0, cov=1.0, gamma=1.0, eps=1e-4):
    """A deliberately plain VICReg in float64: explicit loops over dimensions and pairs."""
    za, zb = za.double(), zb.double()
    n, d = za.shape
    s = ((za - zb) ** 2).sum() / (n * d)

    def v(z):
        total = 0.0
        for j in range(d):
            col = z[:, j]
            var = ((col - col.mean()) ** 2).sum() / (n - 1)
            total += max(0.0, gamma - math.sqrt(var + eps))
        return total / d

    def c(z):
        return float(reference_covariance(z))

    terms = {"invariance": float(s), "variance": (v(za) + v(zb)) / 2, "covariance": c(za) + c(zb)}
    terms["loss"] = sim * terms["invariance"] + std * terms["variance"] + cov * terms["covariance"]
    return terms


def test_hand_computed_two_by_two():
    za = torch.tensor([[0.0, 0.0], [0.5, 1.0]])
    zb = torch.tensor([[0.0, 1.0], [0.5, 1.0]])
    # invariance: one differing entry (1.0) among N*D = 4 -> 1/4
    assert invariance(za, zb).item() == pytest.approx(0.25)
    # za: unbiased Var = (0.25^2 * 2)/1 = 0.125 and (0.5^2 * 2)/1 = 0.5
    v_a = ((1 - math.sqrt(0.125 + 1e-4)) + (1 - math.sqrt(0.5 + 1e-4))) / 2
    assert variance(za).item() == pytest.approx(v_a, rel=1e-6)
    # zb: dim 0 as za, dim 1 constant -> hinge 1 - sqrt(eps) = 0.99
    v_b = ((1 - math.sqrt(0.125 + 1e-4)) + (1 - math.sqrt(1e-4))) / 2
    assert variance(zb).item() == pytest.approx(v_b, rel=1e-6)
    # za centred: [[-.25, -.5], [.25, .5]] -> C01 = 0.25; two off-diagonal entries; /D
    assert covariance(za).item() == pytest.approx(2 * 0.25**2 / 2)
    assert covariance(zb).item() == pytest.approx(0.0, abs=1e-12)
    out = vicreg_loss(za, zb)
    expected = 25 * 0.25 + 25 * (v_a + v_b) / 2 + 1 * (0.0625 + 0.0)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert set(out) >= {"loss", "invariance", "variance", "covariance"}


def test_identical_views_have_zero_invariance():
    z = torch.randn(16, 8)
    assert vicreg_loss(z, z.clone())["invariance"].item() == 0.0


def test_constant_embeddings_give_the_full_variance_hinge():
    z = torch.full((10, 6), 3.0)
    # every std is sqrt(0 + eps) = 0.01, so each dimension contributes 1 - 0.01
    assert variance(z).item() == pytest.approx(0.99, rel=1e-6)
    assert vicreg_loss(z, z)["variance"].item() == pytest.approx(0.99, rel=1e-6)


def test_whitened_embeddings_have_zero_covariance():
    # columns of a Sylvester-Hadamard matrix (minus the constant one) are centred and orthogonal
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:] * 2.5 + torch.arange(7.0)  # scale and shift do not create correlation
    assert covariance(z).item() == pytest.approx(0.0, abs=1e-10)


def test_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    ab, ba = vicreg_loss(za, zb), vicreg_loss(zb, za)
    for key in ab:
        assert ab[key].item() == pytest.approx(ba[key].item(), rel=1e-6)


@pytest.mark.parametrize("n,d,scale", [(8, 5, 1.0), (64, 32, 0.3), (17, 48, 2.0)])
def test_matches_plain_reference(n, d, scale):
    g = torch.Generator().manual_seed(n * d)
    za = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    zb = za + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    ref = reference_vicreg(za, zb)
    out = vicreg_loss(za.float(), zb.float())
    for key, value in ref.items():
        assert out[key].item() == pytest.approx(value, rel=1e-6, abs=1e-6), key


def test_coefficients_and_gamma_are_honoured():
    g = torch.Generator().manual_seed(1)
    za, zb = torch.randn(20, 6, generator=g), torch.randn(20, 6, generator=g)
    ref = reference_vicreg(za, zb, sim=2.0, std=3.0, cov=0.5, gamma=2.0, eps=1e-3)
    out = vicreg_loss(za, zb, sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5, gamma=2.0, eps=1e-3)
    assert out["loss"].item() == pytest.approx(ref["loss"], rel=1e-6)


def test_mlvicx_total_is_global_plus_lambda_multi():
    g = torch.Generator().manual_seed(2)
    ga, gb, ma, mb = (torch.randn(12, 10, generator=g) for _ in range(4))
    out = mlvicx_loss(ga, gb, ma, mb, lam=0.7)
    gl, ml = vicreg_loss(ga, gb), vicreg_loss(ma, mb)
    assert out["loss"].item() == pytest.approx(gl["loss"].item() + 0.7 * ml["loss"].item(), rel=1e-6)
    for term in ("loss", "invariance", "variance", "covariance"):
        assert out[f"global/{term}"].item() == pytest.approx(gl[term].item(), rel=1e-7)
        assert out[f"multi/{term}"].item() == pytest.approx(ml[term].item(), rel=1e-7)
    vic = mlvicx_loss(ga, gb)  # no multi-level branch: VICReg
    assert vic["loss"].item() == pytest.approx(gl["loss"].item(), rel=1e-7)
    assert not any(k.startswith("multi/") for k in vic)


def test_gradients_pass_gradcheck():
    g = torch.Generator().manual_seed(3)
    za = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    zb = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: vicreg_loss(a, b)["loss"], (za, zb))


# -- a second oracle: official VICReg ----------------------------------------------------------------
def official_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """The loss of facebookresearch/vicreg ``main_vicreg.py`` (``VICReg.forward`` after the
    projector), written out here as it is there: MSE; centring; std with eps 1e-4 and a hinge at
    1, halved over the two views; covariance / (N - 1), off-diagonal squares summed / D per view."""
    batch_size, num_features = x.shape
    repr_loss = torch.nn.functional.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = (torch.mean(torch.nn.functional.relu(1 - std_x)) / 2
                + torch.mean(torch.nn.functional.relu(1 - std_y)) / 2)
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)

    def off_diagonal(m):
        n = m.shape[0]
        return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()

    cov_loss = (off_diagonal(cov_x).pow(2).sum().div(num_features)
                + off_diagonal(cov_y).pow(2).sum().div(num_features))
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


@pytest.mark.parametrize("n, d", [(8, 4), (32, 64), (64, 16), (2, 3)])
def test_loss_equals_official_vicreg(n, d):
    g = torch.Generator().manual_seed(n * 1000 + d)
    for scale in (0.05, 1.0, 3.0):  # inside, around and above the std hinge
        za = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
        zb = za + 0.5 * scale * torch.randn(n, d, generator=g, dtype=torch.float64)
        want = official_vicreg(za, zb)
        assert vicreg_loss(za, zb)["loss"].item() == pytest.approx(want.item(), rel=1e-12,
                                                                     abs=1e-12)
        got32 = vicreg_loss(za.float(), zb.float())["loss"].item()
        assert got32 == pytest.approx(want.item(), rel=3e-6, abs=1e-6)
        weighted = official_vicreg(za, zb, sim_coeff=2.0, std_coeff=0.5, cov_coeff=7.0)
        got = vicreg_loss(za, zb, sim_coeff=2.0, std_coeff=0.5, cov_coeff=7.0)["loss"]
        assert got.item() == pytest.approx(weighted.item(), rel=1e-12, abs=1e-12)


def test_gradients_equal_official_vicreg():
    g = torch.Generator().manual_seed(5)
    za = torch.randn(12, 6, generator=g, dtype=torch.float64, requires_grad=True)
    zb = (za.detach() + 0.3 * torch.randn(12, 6, generator=g, dtype=torch.float64)
          ).requires_grad_(True)
    kit = torch.autograd.grad(vicreg_loss(za, zb)["loss"], (za, zb))
    ref = torch.autograd.grad(official_vicreg(za, zb), (za, zb))
    for a, b in zip(kit, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_loss_is_float32_under_autocast():
    g = torch.Generator().manual_seed(4)
    za = torch.randn(16, 8, generator=g).bfloat16()
    zb = torch.randn(16, 8, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vicreg_loss(za, zb)
    ref = vicreg_loss(za.float(), zb.float())
    for key in out:
        assert out[key].dtype == torch.float32
        assert out[key].item() == pytest.approx(ref[key].item(), rel=1e-6)


def test_gather_feeds_variance_and_covariance_only():
    g = torch.Generator().manual_seed(5)
    za, zb, oa, ob = (torch.randn(6, 5, generator=g) for _ in range(4))
    others = {id(za): oa, id(zb): ob}
    out = vicreg_loss(za, zb, gather=lambda z: torch.cat([z, others[id(z)]]))
    full = vicreg_loss(torch.cat([za, oa]), torch.cat([zb, ob]))
    assert out["invariance"].item() == pytest.approx(invariance(za, zb).item(), rel=1e-7)
    assert out["variance"].item() == pytest.approx(full["variance"].item(), rel=1e-6)
    assert out["covariance"].item() == pytest.approx(full["covariance"].item(), rel=1e-6)


def test_batch_of_one_is_rejected():
    with pytest.raises(ValueError, match="batch of 1"):
        vicreg_loss(torch.randn(1, 4), torch.randn(1, 4))


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"z_a \(8, 4\) vs z_b \(8, 5\)"):
        vicreg_loss(torch.randn(8, 4), torch.randn(8, 5))
    with pytest.raises(ValueError, match="2-D"):
        vicreg_loss(torch.randn(8, 4, 1), torch.randn(8, 4, 1))


def test_non_finite_embeddings_are_named():
    za = torch.randn(8, 4)
    za[3, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="embedding z_a"):
        vicreg_loss(za, torch.randn(8, 4))


def test_non_finite_term_is_named():
    # finite inputs whose covariance overflows float32: inf - inf in the off-diagonal sum
    z = torch.tensor([[1e20, 0.0], [-1e20, 1.0], [0.0, 2.0]])
    with pytest.raises(FloatingPointError, match="covariance"):
        vicreg_loss(z, z.clone())


# -- the two exact forms of the covariance term ---------------------------------------------------
# "dxd" squares the D x D covariance; "gram" uses ||Z_c Z_c^T||_F^2 / (N - 1)^2 (N x N). Same value
# in exact arithmetic; in float they are different sums. Tolerances: float64 1e-12 relative; float32
# 1e-5 relative (measured: <= 1.2e-6 over these shapes and up to N=128, D=4096; the off-diagonal sum
# is a difference of two sums of N*D or D^2 terms, so it carries a few ulps of the full sum).
FORM_SHAPES = [(5, 12), (12, 12), (30, 6), (2, 7), (9, 1)]  # N < D, N == D, N > D, N = 2, D = 1
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _input(n, d, dtype):
    g = torch.Generator().manual_seed(100 * n + d)
    f64 = torch.float64
    mix = torch.eye(d, dtype=f64) + 0.3 * torch.randn(d, d, generator=g, dtype=f64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + 2.0).to(dtype)


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("n,d", FORM_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_covariance_forms_equal_the_loop_reference(n, d, dtype):
    z = _input(n, d, dtype)
    z64 = z.double().clone().requires_grad_(True)
    ref = reference_covariance(z64)
    (ref_grad,) = torch.autograd.grad(ref, z64)
    results = {}
    for form in ("dxd", "gram", "auto"):
        zz = z.clone().requires_grad_(True)
        value = covariance(zz, form)
        (grad,) = torch.autograd.grad(value, zz)
        assert value.dtype == dtype and grad.dtype == dtype
        if d > 1:
            assert _rel(value, ref) <= TOL[dtype], form
            assert _rel(grad, ref_grad) <= TOL[dtype], form
        else:  # one dimension: no off-diagonal pair; zero up to the rounding of C_00^2 - C_00^2
            scale = float(z.double().var(0) ** 2)
            assert abs(float(value.detach())) <= TOL[dtype] * scale
            assert float(grad.abs().max()) <= TOL[dtype] * scale
        results[form] = (value, grad)
    if d > 1:  # and the two forms against each other, values and gradients
        assert _rel(results["gram"][0], results["dxd"][0]) <= TOL[dtype]
        assert _rel(results["gram"][1], results["dxd"][1]) <= TOL[dtype]


def test_gram_form_gradcheck():
    z = _input(4, 9, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: covariance(t, "gram"), (z,))


def test_cheaper_form_is_chosen_from_n_and_d():
    assert choose_covariance_form(16, 4096) == "gram"
    assert choose_covariance_form(128, 4096) == "gram"
    assert choose_covariance_form(64, 64) == "dxd"     # equal cost: today's form
    assert choose_covariance_form(256, 64) == "dxd"


def test_auto_form_uses_the_gathered_batch(monkeypatch):
    """Under DDP the choice is made after the gather: 4 local samples of D = 6 use the Gram form
    alone, but gathered to N = 8 the D x D form."""
    calls = []
    for name in ("_offdiag_sq_dxd", "_offdiag_sq_gram"):
        real = getattr(loss_module, name)
        monkeypatch.setattr(loss_module, name,
                            lambda zc, diag, _r=real, _n=name: calls.append((_n, zc.shape[0]))
                            or _r(zc, diag))
    g = torch.Generator().manual_seed(6)
    za, zb, oa, ob = (torch.randn(4, 6, generator=g) for _ in range(4))
    others = {id(za): oa, id(zb): ob}
    vicreg_loss(za, zb)
    assert calls == [("_offdiag_sq_gram", 4)] * 2
    calls.clear()
    vicreg_loss(za, zb, gather=lambda z: torch.cat([z, others[id(z)]]))
    assert calls == [("_offdiag_sq_dxd", 8)] * 2


def test_vicreg_loss_is_the_same_in_either_form():
    g = torch.Generator().manual_seed(8)
    za, zb = torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g)
    dxd = vicreg_loss(za, zb, covariance_form="dxd")
    gram = vicreg_loss(za, zb, covariance_form="gram")
    for key in dxd:
        assert gram[key].item() == pytest.approx(dxd[key].item(), rel=1e-5)
    with pytest.raises(ValueError, match="form='nope'"):
        vicreg_loss(za, zb, covariance_form="nope")
