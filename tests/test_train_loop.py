"""The training loop: metrics content, non-finite stop, every parameter trained, train_or_load."""
import json

import pytest
import torch
from train_helpers import TINY_MODEL, TinyCXR, simple_augment, tiny_config

from mlvicx_core.loss import mlvicx_loss
from mlvicx_core.model import MLVICX
from mlvicx_core.checkpoints import CheckpointManager, load_checkpoint
from mlvicx_core.config import ConfigError
from mlvicx_core.train.metrics_log import read_metrics
from mlvicx_core.train.optim import build_optimizer
from mlvicx_core.train.trainer import train_or_load
from mlvicx_core.train.trainer import NonFiniteLossError, pretrain

TERMS = ("loss", "invariance", "variance", "covariance")


def test_metrics_hold_every_term_and_diagnostics(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.max_steps": 3, "loss.lam": 0.5,
                                   "train.tensorboard": True})
    res = pretrain(cfg, dataset=TinyCXR(32), augment=simple_augment, run_dir=tmp_path / "r")
    df = read_metrics(res.run_dir)
    assert list(df["step"]) == [1, 2, 3]
    for branch in ("global", "multi"):
        for term in TERMS:
            assert df[f"{branch}/{term}"].notna().all(), f"{branch}/{term}"
        # each branch total is the VICReg weighting of its terms (25, 25, 1)
        expected = 25 * df[f"{branch}/invariance"] + 25 * df[f"{branch}/variance"] \
            + df[f"{branch}/covariance"]
        assert torch.allclose(torch.tensor(df[f"{branch}/loss"].values),
                              torch.tensor(expected.values), rtol=1e-5)
    total = df["global/loss"] + 0.5 * df["multi/loss"]
    assert torch.allclose(torch.tensor(df["loss"].values), torch.tensor(total.values), rtol=1e-5)
    assert list(df["loss"]) == res.losses
    assert (df["lr"] > 0).all() and (df["images_per_s"] > 0).all() and (df["grad_norm"] > 0).all()
    # diagnostics at step 1 and every diag_every (= 2) steps, for both branches
    for branch in ("global", "multi"):
        col = df[f"diag/{branch}/eff_rank"]
        assert col.notna().tolist() == [True, True, False]
        assert (col.dropna() >= 1).all() and (col.dropna() <= 8).all()  # batch 8 -> rank <= 7
    assert list((res.run_dir / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("name, lr", [("lars", 0.05), ("adamw", 1e-3)])
def test_one_step_changes_every_trainable_parameter(name, lr):
    torch.manual_seed(0)
    model = MLVICX(TINY_MODEL)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = build_optimizer(model, name, lr=lr, weight_decay=1e-4)
    x = TinyCXR(8)
    images = torch.stack([x[i]["image"] for i in range(8)])
    a, b = simple_augment(images, torch.Generator().manual_seed(0))
    za, zb = model(a), model(b)
    mlvicx_loss(za.global_, zb.global_, za.multi, zb.multi)["loss"].backward()
    opt.step()
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad
                 and torch.equal(p.detach(), before[n])]
    assert unchanged == []


def test_non_finite_loss_names_step_and_term(tmp_path):
    torch.manual_seed(0)
    model = MLVICX(TINY_MODEL)
    calls = {"n": 0}

    def poison(module, inputs, output):  # the multi-level head returns NaN from step 2 on
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output

    model.ml_projector.register_forward_hook(poison)
    cfg = tiny_config(tmp_path, **{"train.ckpt_every": 1})
    with pytest.raises(NonFiniteLossError) as info:
        pretrain(cfg, dataset=TinyCXR(32), augment=simple_augment, model=model,
                 run_dir=tmp_path / "r")
    msg = str(info.value)
    assert "step 2" in msg and "multi/invariance=nan" in msg and "multi/covariance=nan" in msg
    assert "global/" not in msg  # the global branch was fine
    ckpts = CheckpointManager(tmp_path / "r" / "checkpoints").checkpoints()
    assert [p.name for p in ckpts] == ["step-00000001.pt"] and str(ckpts[0]) in msg
    state = load_checkpoint(ckpts[0])
    assert state["step"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert [json.loads(line)["step"] for line in
            (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [1]


def test_train_or_load_reuses_a_finished_run(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.max_steps": 2})
    first = train_or_load(cfg, dataset=TinyCXR(32), augment=simple_augment)
    assert first.step == 2 and len(first.losses) == 2
    # renaming nothing but the progress setting keeps the content hash: loaded, not retrained
    again = train_or_load(tiny_config(tmp_path, **{"train.max_steps": 2, "train.progress": True}))
    assert again.run_dir == first.run_dir and again.losses == [] and again.step == 2
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    # max_steps is not part of the run's identity: asking for more continues the same run ...
    more = train_or_load(tiny_config(tmp_path, **{"train.max_steps": 3}), dataset=TinyCXR(32),
                         augment=simple_augment)
    assert more.run_dir == first.run_dir and more.step == 3 and len(more.losses) == 1
    straight = train_or_load(tiny_config(tmp_path / "s", **{"train.max_steps": 3}),
                             dataset=TinyCXR(32), augment=simple_augment)
    assert straight.losses == first.losses + more.losses  # ... exactly as one run of 3 steps
    # ... and asking for fewer than a finished run holds is refused (it cannot be rewound)
    with pytest.raises(ConfigError, match="trained to step 3.*asks for 1"):
        train_or_load(tiny_config(tmp_path, **{"train.max_steps": 1}))


def test_resuming_with_another_config_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.max_steps": 1})
    pretrain(cfg, dataset=TinyCXR(32), augment=simple_augment, run_dir=tmp_path / "r")
    changed = tiny_config(tmp_path, **{"train.max_steps": 2, "loss.lam": 0.5})
    with pytest.raises(ConfigError, match=r"differs in \['loss\.lam'\]"):
        pretrain(changed, dataset=TinyCXR(32), augment=simple_augment, run_dir=tmp_path / "r")


def test_concurrent_train_or_load_trains_once(tmp_path, monkeypatch):
    import threading

    from mlvicx_core.train import trainer

    calls = []
    real = trainer.pretrain

    def counting(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "pretrain", counting)
    cfg = tiny_config(tmp_path, **{"train.max_steps": 2})
    results = {}

    def worker(name):
        results[name] = train_or_load(cfg, dataset=TinyCXR(32), augment=simple_augment)

    threads = [threading.Thread(target=worker, args=(n,), name=n) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1  # the second caller waited on the lock, then loaded the finished run
    assert results["a"].run_dir == results["b"].run_dir and {r.step for r in results.values()} == {2}
