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


# -- which code a run comes from (issue 19 item 8) -------------------------------------------------
def test_the_code_fingerprint_ignores_comments_and_docstrings_but_not_code(tmp_path):
    from mlvicx_core.train.fingerprint import source_digest

    variants = {
        "base": 'def f(x):\n    """Double."""\n    return 2 * x\n',
        "comment": '# a comment\ndef f(x):  # another\n    """Double it."""\n\n    return 2*x\n',
        "no docstring": "def f(x):\n    return (2 * x)\n",
        "code": 'def f(x):\n    """Double."""\n    return 3 * x\n',
        "name": 'def g(x):\n    """Double."""\n    return 2 * x\n',
    }
    digests = {}
    for name, text in variants.items():
        path = tmp_path / f"{name.replace(' ', '_')}.py"
        path.write_text(text)
        digests[name] = source_digest(path)
    assert digests["base"] == digests["comment"] == digests["no docstring"]
    assert len({digests["base"], digests["code"], digests["name"]}) == 3


def test_the_code_fingerprint_covers_what_defines_the_weights(tmp_path, monkeypatch):
    """Every module that defines a run's weights (network, loss, views, step, loop, optimiser, the
    dataset read) changes the fingerprint; the evaluation code and the dataset not read do not."""
    import shutil

    import mlvicx_core
    from mlvicx_core.data.registry import DATASETS
    from mlvicx_core.train import fingerprint

    assert set(DATASETS) <= set(fingerprint.DATASET_MODULES)  # a new dataset needs its entry
    copy = tmp_path / "mlvicx_core"
    shutil.copytree(fingerprint.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE", copy)
    base = {d: fingerprint.code_fingerprint(d) for d in ("synthetic", "nih")}
    assert base == {d: fingerprint.code_fingerprint(d) for d in base}  # stable
    changes = {"model.py": ("synthetic", "nih"), "loss.py": ("synthetic", "nih"),
               "data/augment.py": ("synthetic", "nih"), "train/step.py": ("synthetic", "nih"),
               "train/optim.py": ("synthetic", "nih"), "data/phantom.py": ("synthetic",),
               "data/tables.py": ("nih",), "evaluation/probe.py": (), "data/vindr.py": ()}
    for name, affected in changes.items():
        path = copy / name
        original = path.read_text()
        path.write_text(original + "\n_CHANGED = 1\n")
        assert [d for d in base if fingerprint.code_fingerprint(d) != base[d]] == list(affected), \
            name
        path.write_text(original + "\n# a comment changes nothing\n")
        assert {d: fingerprint.code_fingerprint(d) for d in base} == base, name
        path.write_text(original)
    assert mlvicx_core.__version__ == fingerprint.kit_version()


def _stale(run_dir, what: str = "done.json") -> None:
    """Make ``run_dir``'s run look trained by other (older) code."""
    if what == "done.json":
        done = json.loads((run_dir / "done.json").read_text())
        done.update(code_fingerprints=["0" * 64], kit_version="0.1.0")
        (run_dir / "done.json").write_text(json.dumps(done))
        return
    for path in CheckpointManager(run_dir / "checkpoints").checkpoints():
        state = load_checkpoint(path)
        state.update(code_fingerprints=["0" * 64], kit_version="0.1.0")
        torch.save(state, path)


def test_train_or_load_retrains_a_run_of_other_code_in_a_fresh_folder(tmp_path, capsys):
    """A finished run found by its configuration hash but trained by other code is neither reused
    silently nor destroyed: the run is trained afresh next to it, with one line naming both
    fingerprints, and the fresh run is what later calls reuse."""
    from mlvicx_core.train.fingerprint import code_fingerprint, kit_version
    from mlvicx_core.train.trainer import fresh_run_dir

    cfg = tiny_config(tmp_path, **{"train.max_steps": 2})
    kwargs = {"dataset": TinyCXR(32), "augment": simple_augment}
    first = train_or_load(cfg, **kwargs)
    fp = code_fingerprint(cfg.data.dataset)
    done = json.loads((first.run_dir / "done.json").read_text())
    assert (done["code_fingerprints"], done["code_fingerprint"], done["kit_version"]) == \
        ([fp], fp, kit_version())
    assert load_checkpoint(first.checkpoint)["code_fingerprints"] == [fp]
    _stale(first.run_dir)
    kept = {p: p.read_bytes() for p in first.run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()

    again = train_or_load(cfg, **kwargs)
    fresh = fresh_run_dir(first.run_dir, fp)
    assert again.run_dir == fresh == first.run_dir.with_name(f"{first.run_dir.name}-code{fp[:8]}")
    assert len(again.losses) == 2  # trained, not reused
    line = capsys.readouterr().out.splitlines()[0]
    assert line == (f"{first.run_dir} holds this configuration trained by other code (code "
                    f"fingerprint {'0' * 12}, kit 0.1.0; this code is {fp[:12]}, kit "
                    f"{kit_version()}): training afresh in {fresh} (the old run is kept)")
    assert {p: p.read_bytes() for p in first.run_dir.rglob("*") if p.is_file()} == kept
    for k, v in first.model.state_dict().items():  # the same code gives the same weights
        assert torch.equal(v, again.model.state_dict()[k]), k

    third = train_or_load(cfg)  # the fresh run is reused, without training
    assert third.run_dir == fresh and third.losses == [] and third.step == 2
    assert capsys.readouterr().out == (
        f"{first.run_dir} holds this configuration trained by other code (code fingerprint "
        f"{'0' * 12}, kit 0.1.0; this code is {fp[:12]}, kit {kit_version()}): reusing this "
        f"code's run in {fresh} (the old run is kept)\n")


def test_an_interrupted_run_resumes_with_its_own_code_and_not_with_other_code(tmp_path, capsys):
    """train_or_load resumes an unfinished run of this code in place; one whose checkpoints come
    from other code is trained afresh next to it; ``mlvicx pretrain`` (the folder chosen by the
    user) resumes it anyway and warns naming both fingerprints."""
    from mlvicx_core.train.fingerprint import code_fingerprint
    from mlvicx_core.train.runs import run_dir_for
    from mlvicx_core.train.trainer import fresh_run_dir

    kwargs = {"dataset": TinyCXR(32), "augment": simple_augment}
    short = pretrain(tiny_config(tmp_path, **{"train.max_steps": 2}), **kwargs)
    whole = tiny_config(tmp_path, **{"train.max_steps": 3})
    assert short.run_dir == run_dir_for(whole)
    resumed = train_or_load(whole, **kwargs)  # same code: continued in place
    assert resumed.run_dir == short.run_dir and len(resumed.losses) == 1

    other = tiny_config(tmp_path / "o", **{"train.max_steps": 2})
    pretrain(other, **kwargs)
    (run_dir_for(other) / "done.json").unlink()  # killed before the end
    _stale(run_dir_for(other), "checkpoints")
    capsys.readouterr()
    fresh = train_or_load(tiny_config(tmp_path / "o", **{"train.max_steps": 3}), **kwargs)
    fp = code_fingerprint("synthetic")
    assert fresh.run_dir == fresh_run_dir(run_dir_for(other), fp) and len(fresh.losses) == 3
    assert "trained by other code (code fingerprint 000000000000, kit 0.1.0" in \
        capsys.readouterr().out
    with pytest.warns(UserWarning, match=r"step-00000002\.pt was written by other code \(code "
                                         r"fingerprint 000000000000, kit 0\.1\.0; this code is "
                                         rf"{fp[:12]}, kit .*\): resuming anyway, so this run "
                                         "mixes both"):
        mixed = pretrain(tiny_config(tmp_path / "o", **{"train.max_steps": 3}), **kwargs)
    assert mixed.run_dir == run_dir_for(other) and len(mixed.losses) == 1
    done = json.loads((mixed.run_dir / "done.json").read_text())
    assert done["code_fingerprints"] == ["0" * 64, fp]  # a mixed run is never reused as this code's
