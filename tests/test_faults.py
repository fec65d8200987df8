"""Fault injection: the real ``mlvicx`` command in subprocesses, killed, run twice at once, given
corrupt checkpoints, a full disk, exploding weights and a bad image (docs/TRAINING.md, "What the kit
promises under faults").

Every run is the tiny network on 16 PNGs of 40 x 40 px read at 32 px, batch 8 (2 steps an epoch),
4 steps, a checkpoint every step. The reference is one uninterrupted run; "bit-identical" compares
every weight and optimizer tensor of its step-4 checkpoint and every metrics record (but the
throughput) with ``==``, which holds on CPU with one thread.

Faults are injected without touching the product code: ``SITECUSTOMIZE`` below is written as
``sitecustomize.py`` into a folder on the child's ``PYTHONPATH``. When ``MLVICX_FAULT`` is set it
replaces ``open()`` for one file (the checkpoint temporary of a given step) with a file whose writes
past a byte offset either fail with ENOSPC (a full disk, as the kernel reports it: a short write,
then the error) or block until a release file exists (the process is then killed, or released).
A real full file system needs root (mount) here, so the disk is simulated at the write call; a real
kernel write failure (a file-size limit) is tested in test_train_checkpoint.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# the real CLI in subprocesses: make test runs these, make test-fast leaves them out
pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
TINY = ["data.view_size=32", "data.stored_size=null", "train.eval_every=0",
        "model.projector=[32,32]", "model.ml_projector=[32,32]",
        "model.fusion_size=8", "model.fusion_channels=16", "model.pool_size=2",
        "train.batch_size=8", "train.tensorboard=false", "train.ckpt_every=1",
        "train.keep_last=3", "train.threads=0",
        # the run these faults were calibrated on: width 64, projectors ending in BatchNorm, a
        # one-epoch warmup (SGD at lr 1e38 must overflow at step 1)
        "model.width=64", "model.projector_last_bn=true", "optim.warmup_epochs=1"]

SITECUSTOMIZE = '''
"""Fault injection for tests/test_faults.py, imported by the interpreter at start-up.

MLVICX_FAULT=<action>:<name>:<offset> acts on files opened for binary writing through open() whose
name contains <name>; once a file would grow past <offset> bytes:
  enospc  the write fails with ENOSPC (after a short write up to <offset>, as the kernel does)
  hang    the file is fsync-ed, then the write waits until the file MLVICX_FAULT_RELEASE exists
          (forever if unset)
or, for files opened for text writing or appending (metrics.jsonl):
  pauseline  the write of line <offset> + 1 waits until MLVICX_FAULT_RELEASE exists (a process
             held at a known step, e.g. to be sent a signal there)
MLVICX_FAULT_FIRED names a file that gets this process's pid when the fault fires.
"""
import builtins
import errno
import io
import os
import time


_spec = os.environ.get("MLVICX_FAULT")
if _spec:
    _action, _name, _offset = _spec.split(":")
    _offset = int(_offset)
    _release = os.environ.get("MLVICX_FAULT_RELEASE")
    _fired = os.environ.get("MLVICX_FAULT_FIRED")
    _real_open = builtins.open

    class _Faulty(io.FileIO):
        fired = False

        def _fire(self):
            if not self.fired and _fired:
                with _real_open(_fired, "a") as fh:
                    fh.write(f"{os.getpid()}\\n")
            self.fired = True

        def write(self, data):
            data = memoryview(data).cast("B")
            room = _offset - self.tell()
            if len(data) <= room:
                return super().write(data)
            if room > 0:
                return super().write(data[:room])
            if _action == "enospc":
                self._fire()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if not self.fired:
                os.fsync(self.fileno())
                self._fire()
            while _release is None or not os.path.exists(_release):
                time.sleep(0.05)
            return super().write(data)

    class _PausedLines:
        """A text file whose write of line <offset> + 1 waits for the release file."""

        def __init__(self, f):
            self._f, self._lines, self.fired = f, 0, False

        def write(self, text):
            if not self.fired and self._lines + text.count("\\n") > _offset:
                _Faulty._fire(self)
                while _release is None or not os.path.exists(_release):
                    time.sleep(0.05)
            self._lines += text.count("\\n")
            return self._f.write(text)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def open(file, mode="r", *args, **kwargs):
        named = (isinstance(file, (str, os.PathLike))
                 and _name in os.path.basename(os.fspath(file)))
        if named and _action == "pauseline" and ("w" in mode or "a" in mode) and "b" not in mode:
            return _PausedLines(_real_open(file, mode, *args, **kwargs))
        if named and _action != "pauseline" and "w" in mode and "b" in mode:
            return io.BufferedWriter(_Faulty(file, "w"))
        return _real_open(file, mode, *args, **kwargs)

    builtins.open = open
'''


# -- helpers ---------------------------------------------------------------------------------------
def _write_images(root: Path, n: int = 16) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def _env(site: Path, **fault: str) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", OMP_NUM_THREADS="1",
               PYTHONWARNINGS="default::UserWarning")
    for k in [k for k in env if k.startswith("MLVICX_FAULT")]:
        del env[k]
    env.update({f"MLVICX_FAULT{'_' + k.upper() if k != 'spec' else ''}": v
                for k, v in fault.items()})
    return env


def _args(command: str, *sets: str) -> list[str]:
    argv = [sys.executable, "-m", "mlvicx_core.cli", command]
    for s in sets:
        argv += ["--set", s]
    return argv


def _pretrain(data: Path, out: Path, *extra: str, steps: int = STEPS) -> list[str]:
    return _args("pretrain", *TINY, "data.dataset=folder", f"data.root={data}",
                 f"train.out_dir={out}", f"train.max_steps={steps}", *extra)


def _run(argv, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


def _start(argv, env, cwd: Path, name: str) -> subprocess.Popen:
    """A child whose stdout/stderr go to files (``<name>.out``/``.err``; a pipe could fill)."""
    with open(cwd / f"{name}.out", "w") as out, open(cwd / f"{name}.err", "w") as err:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err, text=True)


def _err(cwd: Path, name: str) -> str:
    return (cwd / f"{name}.err").read_text()


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before {what}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lines(stderr: str) -> list[str]:
    """stderr without the progress bar's carriage-return updates."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not line.startswith("pretrain mlvicx")]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _tensors(obj):
    if torch.is_tensor(obj):
        yield "", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            for name, t in _tensors(v):
                yield f"{k}.{name}" if name else str(k), t
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            for name, t in _tensors(v):
                yield f"{i}.{name}" if name else str(i), t


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


class Reference:
    """One uninterrupted run of ``STEPS`` steps (default run folder, so ``<preset>-<hash>``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.site = root / "site"
        self.site.mkdir()
        (self.site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.data = _write_images(root / "images")
        proc = _run(_pretrain(self.data, root / "runs"), _env(self.site), root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (self.run,) = (root / "runs").iterdir()
        self.stderr = proc.stderr
        self.stdout = proc.stdout
        self.ckpts = self.run / "checkpoints"
        self.final = _load(self.ckpts / f"step-{STEPS:08d}.pt")
        self.records = _records(self.run)

    def assert_same(self, run: Path, steps: int = STEPS) -> None:
        """``run``'s step-``STEPS`` checkpoint (weights, optimizer, schedule, every RNG) and first
        records equal the reference's, bit for bit."""
        other = _load(run / "checkpoints" / f"step-{STEPS:08d}.pt")
        assert other["step"] == STEPS and other["scheduler"] == self.final["scheduler"]
        assert np.array_equal(other["rng"]["numpy"][1], self.final["rng"]["numpy"][1])
        for part in ("model", "optimizer", "rng", "augment_rng"):
            mine, theirs = dict(_tensors(self.final[part])), dict(_tensors(other[part]))
            assert mine.keys() == theirs.keys(), part
            for k, t in mine.items():
                assert torch.equal(t, theirs[k]), f"{part}.{k}"
        got = _records(run)
        assert [r["step"] for r in got] == list(range(1, steps + 1))  # each step once

        def strip(r):
            return {k: v for k, v in r.items() if k != "images_per_s"}

        assert [strip(r) for r in got[:STEPS]] == [strip(r) for r in self.records]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    reference = Reference(tmp_path_factory.mktemp("reference"))
    yield reference
    _remove_checkpoints(reference.root)


def _copy_run(ref: Reference, out: Path, checkpoints=(2, 3, 4)) -> Path:
    """A copy of the reference run folder under ``out`` (checkpoints hard-linked: never written in
    place by the kit, which replaces files)."""
    run = out / ref.run.name
    (run / "checkpoints").mkdir(parents=True)
    for name in ("metrics.jsonl", "config.yaml", "done.json"):
        shutil.copy(ref.run / name, run / name)
    for step in checkpoints:
        name = f"step-{step:08d}.pt"
        os.link(ref.ckpts / name, run / "checkpoints" / name)
    return run


def _remove_checkpoints(folder: Path) -> None:
    """Passed tests drop their (140 MB) checkpoints; a failing test keeps them to look at."""
    for p in folder.rglob("*.pt"):
        p.unlink()


# -- 1. kill -9 during a checkpoint write ---------------------------------------------------------
def test_kill_9_during_a_checkpoint_write_then_resume_is_bit_identical(ref, tmp_path):
    assert f"starting a new run in {ref.run} ({STEPS} steps)" in ref.stdout
    fired = tmp_path / "fired"
    env = _env(ref.site, spec="hang:.step-00000003.pt.tmp:1000000", fired=str(fired))
    argv = _pretrain(ref.data, tmp_path / "runs", "train.run_name=killed")
    child = _start(argv, env, tmp_path, "killed")
    _wait_for(fired.exists, child, "the write of step 3's checkpoint")
    ckpts = tmp_path / "runs" / "killed" / "checkpoints"
    tmp = ckpts / f".step-00000003.pt.tmp{child.pid}"
    assert tmp.stat().st_size == 1_000_000  # half-written (the checkpoint is ~140 MB)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert _names(ckpts) == [tmp.name, "step-00000001.pt", "step-00000002.pt"]

    proc = _run(argv, _env(ref.site), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {ckpts.parent} from step 2 (step-00000002.pt) to step {STEPS}" in proc.stdout
    assert not tmp.exists()  # the dead writer's temporary was removed (before the next write)
    assert _names(ckpts) == ["step-00000002.pt", "step-00000003.pt", "step-00000004.pt"]
    ref.assert_same(ckpts.parent)
    _remove_checkpoints(tmp_path)


# -- 2. two pretrain processes on one run folder --------------------------------------------------
def test_a_second_pretrain_on_a_busy_run_folder_refuses_at_once(ref, tmp_path):
    release, fired = tmp_path / "release", tmp_path / "fired"
    argv = _pretrain(ref.data, tmp_path / "runs", "train.run_name=busy")
    first = _start(argv, _env(ref.site, spec="hang:.step-00000001.pt.tmp:1000000",
                              release=str(release), fired=str(fired)), tmp_path, "first")
    _wait_for(fired.exists, first, "the first run's first checkpoint write")
    run = tmp_path / "runs" / "busy"
    tmp = run / "checkpoints" / f".step-00000001.pt.tmp{first.pid}"
    assert tmp.is_file()

    second = _run(argv, _env(ref.site), tmp_path)  # the same command, while the first one writes
    assert first.poll() is None  # the second did not wait for the first
    assert second.returncode == 2, second.stderr[-3000:]
    assert _lines(second.stderr) == [
        (f"mlvicx pretrain: error: run folder {run} is in use by another process (pid "
         f"{first.pid}); wait for it to finish, or use another train.run_name / train.out_dir")]
    assert tmp.is_file()  # the running process's temporary file is untouched

    release.touch()
    assert first.wait(timeout=300) == 0, _err(tmp_path, "first")[-3000:]
    ref.assert_same(run)  # metrics: each step once, all of them the first process's
    _remove_checkpoints(tmp_path)


# -- 3. corrupt checkpoints -----------------------------------------------------------------------
def test_corrupt_latest_checkpoints_fall_back_to_the_newest_readable_one(ref, tmp_path):
    run = _copy_run(ref, tmp_path / "runs", checkpoints=(2,))
    ckpts = run / "checkpoints"
    (ckpts / "step-00000003.pt").write_bytes(np.random.default_rng(0).bytes(4096))  # garbage
    with open(ref.ckpts / "step-00000004.pt", "rb") as f:
        (ckpts / "step-00000004.pt").write_bytes(f.read(5_000_000))  # truncated
    (run / "done.json").unlink()  # as a crash before the end would leave it

    proc = _run(_pretrain(ref.data, tmp_path / "runs"), _env(ref.site), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = next(line for line in _lines(proc.stderr) if "UserWarning" in line)
    for name in ("step-00000004.pt is not a readable checkpoint",
                 "step-00000003.pt is not a readable checkpoint",
                 f"falling back to {ckpts / 'step-00000002.pt'}"):
        assert name in warning, warning
    assert f"resuming {run} from step 2 (step-00000002.pt)" in proc.stdout
    ref.assert_same(run)
    _remove_checkpoints(tmp_path)


def test_every_checkpoint_corrupt_stops_and_names_them(ref, tmp_path):
    run = _copy_run(ref, tmp_path / "runs", checkpoints=())
    ckpts = run / "checkpoints"
    (ckpts / "step-00000001.pt").write_bytes(b"not a checkpoint")
    with open(ref.ckpts / "step-00000002.pt", "rb") as f:
        (ckpts / "step-00000002.pt").write_bytes(f.read(1_000_000))
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}

    proc = _run(_pretrain(ref.data, tmp_path / "runs"), _env(ref.site), tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [x for x in _lines(proc.stderr) if "error" in x]
    assert line.startswith(f"mlvicx pretrain: error: no readable checkpoint in {ckpts}: ")
    for name in before:
        assert f"{ckpts / name} is not a readable checkpoint" in line
    assert "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before  # nothing started over


def test_evaluate_and_export_trunk_name_a_corrupt_or_mismatched_file(ref, tmp_path, capsys):
    """``mlvicx evaluate`` and ``mlvicx export-trunk`` (in this process: the same entry point)."""
    from mlvicx_core.cli import main

    corrupt = tmp_path / "corrupt.pt"
    with open(ref.ckpts / "step-00000002.pt", "rb") as f:
        corrupt.write_bytes(f.read(2_000_000))
    state = _load(ref.ckpts / "step-00000002.pt")
    key = next(k for k in state["model"] if "projector" in k and k.endswith("weight"))
    shape = (state["model"][key].shape[0] + 1, *state["model"][key].shape[1:])
    state["model"][key] = torch.zeros(shape)
    mismatched = tmp_path / "mismatched.pt"
    torch.save({"model": state["model"], "config": state["config"]}, mismatched)
    del state

    assert main(["evaluate", "--checkpoint", f"m={corrupt}", "--set", "eval.split_sizes=[8,8,8]",
                 "--set", "eval.tasks=[probe]", "--out", str(tmp_path / "eval")]) == 2
    assert capsys.readouterr().err.startswith(
        f"mlvicx evaluate: error: {corrupt} is not a readable checkpoint (RuntimeError: "
        "PytorchStreamReader failed")
    assert not (tmp_path / "eval" / "results.csv").exists()
    assert main(["export-trunk", str(corrupt), str(tmp_path / "t.pt")]) == 2
    assert capsys.readouterr().err.startswith(
        f"mlvicx export-trunk: error: {corrupt} is not a readable checkpoint (")
    assert main(["export-trunk", str(mismatched), str(tmp_path / "t.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mlvicx export-trunk: error: {mismatched}: weights do not match")
    assert f"{key}: file {shape} vs network ({shape[0] - 1}," in err
    assert not (tmp_path / "t.pt").exists()


# -- 4. a full disk ---------------------------------------------------------------------------------
def test_a_full_disk_names_the_file_leaves_no_temporary_and_a_rerun_resumes(ref, tmp_path):
    fired = tmp_path / "fired"
    argv = _pretrain(ref.data, tmp_path / "runs", "train.run_name=full")
    full = _env(ref.site, spec="enospc:.step-00000003.pt.tmp:1000000", fired=str(fired))
    proc = _run(argv, full, tmp_path)
    ckpts = tmp_path / "runs" / "full" / "checkpoints"
    assert fired.exists() and proc.returncode == 1, proc.stderr[-3000:]
    assert _lines(proc.stderr)[-2:] == [
        (f"mlvicx pretrain: error: [Errno 28] could not write {ckpts / 'step-00000003.pt'}: No "
         "space left on device"),
        ("(free some space and run the same command again: pretraining resumes from the newest "
         "checkpoint)")]
    assert "Traceback" not in proc.stderr
    assert _names(ckpts) == ["step-00000001.pt", "step-00000002.pt"]  # no temporary file left
    kept = _load(ckpts / "step-00000002.pt")
    for k, t in _tensors(ref_model := _load(ref.ckpts / "step-00000002.pt")["model"]):
        assert torch.equal(kept["model"][k], t), k  # the previous checkpoints are intact
    del kept, ref_model

    proc = _run(argv, _env(ref.site), tmp_path)  # space freed
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {ckpts.parent} from step 2 (step-00000002.pt)" in proc.stdout
    ref.assert_same(ckpts.parent)
    _remove_checkpoints(tmp_path)


# -- 5. non-finite weights --------------------------------------------------------------------------
def test_non_finite_values_stop_the_run_and_are_never_checkpointed(ref, tmp_path):
    out = tmp_path / "runs"
    env = _env(ref.site)
    children = {
        # AdamW's steps are ~lr: weights ~1e28 after step 1 (finite), the loss of step 2 is NaN
        "huge": _start(_pretrain(ref.data, out, "train.run_name=huge", "optim.base_lr=1e30"),
                       env, tmp_path, "huge"),
        # SGD's step lr * gradient overflows float32: the weights themselves become inf
        "inf": _start(_pretrain(ref.data, out, "train.run_name=inf", "optim.name=sgd",
                                "optim.base_lr=1e38"), env, tmp_path, "inf"),
    }
    for name, child in children.items():
        assert child.wait(timeout=300) == 1, (name, _err(tmp_path, name)[-3000:])
    huge = out / "huge" / "checkpoints" / "step-00000001.pt"
    (line,) = [x for x in _lines(_err(tmp_path, "huge")) if "training stopped" in x]
    assert line.startswith("mlvicx pretrain: training stopped: non-finite loss at step 2: loss=nan")
    assert line.endswith(f"Last good checkpoint: {huge}")
    state = _load(huge)
    floats = [(k, t) for k, t in _tensors(state) if t.is_floating_point()]
    assert len(floats) > 100 and all(bool(torch.isfinite(t).all()) for _, t in floats)

    (line,) = [x for x in _lines(_err(tmp_path, "inf")) if "training stopped" in x]
    assert "non-finite weights after step 1" in line and "not checkpointed" in line
    assert line.endswith("Last good checkpoint: none saved yet")
    assert not (out / "inf" / "checkpoints").exists() or not list((out / "inf").rglob("*.pt"))
    _remove_checkpoints(tmp_path)


# -- 6. more steps on a finished run --------------------------------------------------------------
def test_raising_max_steps_continues_a_finished_run(ref, tmp_path):
    run = _copy_run(ref, tmp_path / "runs")  # the default run folder: <preset>-<hash>
    assert json.loads((run / "done.json").read_text())["step"] == STEPS
    proc = _run(_pretrain(ref.data, tmp_path / "runs", steps=STEPS + 1), _env(ref.site), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {run} from step {STEPS} (step-{STEPS:08d}.pt) to step {STEPS + 1}" in \
        proc.stdout
    assert f"finished {STEPS + 1} steps. Results in {run}" in proc.stdout
    assert _names(tmp_path / "runs") == [run.name]  # no new folder
    ref.assert_same(run, steps=STEPS + 1)  # metrics continue: steps 1..5, each once
    assert json.loads((run / "done.json").read_text())["step"] == STEPS + 1
    _remove_checkpoints(tmp_path)


# -- 7. a bad image ---------------------------------------------------------------------------------
def test_a_bad_image_stops_naming_the_file_or_is_skipped(ref, tmp_path):
    data = tmp_path / "images"
    shutil.copytree(ref.data, data)
    bad = data / "005.png"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    out, env = tmp_path / "runs", _env(ref.site)
    children = {
        f"raise{w}": _start(_pretrain(data, out, f"train.run_name=raise{w}",
                                      f"data.num_workers={w}"), env, tmp_path, f"raise{w}")
        for w in (0, 1)  # in the main process, and in a DataLoader worker
    }
    children["skip"] = _start(_pretrain(data, out, "train.run_name=skip", "data.on_error=skip",
                                        "train.progress=false", steps=2), env, tmp_path, "skip")
    for name, child in children.items():
        assert child.wait(timeout=300) == (0 if name == "skip" else 2), _err(tmp_path, name)
    for name in ("raise0", "raise1"):
        err = _err(tmp_path, name)
        assert "Traceback" not in err, err
        assert [x for x in _lines(err) if not x.startswith("starting a new run")] == [
            f"mlvicx pretrain: error: {bad}: unreadable or corrupt image (image file is truncated)",
            "(to skip unreadable files instead, add --set data.on_error=skip)"]
    warnings = [x for x in _lines(_err(tmp_path, "skip")) if "UserWarning" in x]
    assert warnings and all(f"skipping {bad}" in x for x in warnings)
    assert all(x.count(str(bad)) == 1 for x in warnings)  # the file is named once
    assert [r["step"] for r in _records(out / "skip")] == [1, 2]
    _remove_checkpoints(tmp_path)


# -- 8. SIGTERM and SIGINT mid-run ----------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_checkpoints_that_step_says_where_and_resumes_bit_identically(
        ref, tmp_path, sig):
    """Issue 19 item 2: SIGTERM at step 5 of 12 (first checkpoint due at step 8) exited 143 with no
    message and no checkpoint, and the rerun started from 0; SIGINT printed a 200-line traceback.
    Here no checkpoint is due before the end (train.ckpt_every=100); the child is held while it
    writes step 3's record and is sent the signal there: SIGTERM to the process (a scheduler's
    kill), SIGINT to its whole process group, a DataLoader worker included (Ctrl-C in a
    terminal)."""
    release, fired, name = tmp_path / "release", tmp_path / "fired", sig.name
    argv = _pretrain(ref.data, tmp_path / "runs", f"train.run_name={name}", "train.ckpt_every=100",
                     f"data.num_workers={1 if sig == signal.SIGINT else 0}")
    env = _env(ref.site, spec="pauseline:metrics.jsonl:2", release=str(release), fired=str(fired))
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        child = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=out, stderr=err,
                                 start_new_session=True)
    _wait_for(fired.exists, child, "the record of step 3")
    if sig == signal.SIGINT:
        os.killpg(child.pid, sig)
    else:
        os.kill(child.pid, sig)
    release.touch()
    assert child.wait(timeout=300) == 128 + sig, _err(tmp_path, name)[-3000:]  # 143, 130
    run = tmp_path / "runs" / name
    ckpt = run / "checkpoints" / "step-00000003.pt"
    err = _err(tmp_path, name)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert _lines(err) == [
        (f"mlvicx pretrain: interrupted by {name} after step 3 of {STEPS}; checkpoint written: "
        f"{ckpt}. The same command (or the same pretrain / train_or_load call) resumes from it")]
    assert _names(run / "checkpoints") == [ckpt.name]  # written at the interrupted step, only
    assert [r["step"] for r in _records(run)] == [1, 2, 3]
    assert not (run / "done.json").exists()

    proc = _run(argv, _env(ref.site), tmp_path)  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {run} from step 3 (step-00000003.pt) to step {STEPS}" in proc.stdout
    ref.assert_same(run)  # weights, optimizer, every RNG and every record: bit for bit
    _remove_checkpoints(tmp_path)


# -- 9. a file that is not what its name says ------------------------------------------------------
def test_export_trunk_onto_its_own_input_or_a_checkpoint_name_is_refused(ref, tmp_path):
    """Issue 19 item 1: ``export-trunk CKPT CKPT`` exited 0 and replaced a run's only checkpoint
    with its 45 MB trunk."""
    ckpts = _copy_run(ref, tmp_path / "runs", checkpoints=(4,)) / "checkpoints"
    ckpt = ckpts / "step-00000004.pt"
    (tmp_path / "link.pt").symlink_to(ckpt)
    before = ckpt.read_bytes()
    for output, message in (
            (ckpt, f"the output {ckpt} is the checkpoint being read: the trunk would replace it"),
            (tmp_path / "link.pt",
             f"the output {tmp_path / 'link.pt'} is the checkpoint being read"),
            (ckpts / "step-00000005.pt",
             (f"the output {ckpts / 'step-00000005.pt'} is named like a training checkpoint "
              "(step-XXXXXXXX.pt)"))):
        proc = _run(_args("export-trunk") + [str(ckpt), str(output)], _env(ref.site), tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.startswith(f"mlvicx export-trunk: error: {message}")
        assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert ckpt.read_bytes() == before and _names(ckpts) == [ckpt.name]
    proc = _run(_args("export-trunk") + [str(ckpt), str(tmp_path / "trunk.pt")], _env(ref.site),
                tmp_path)
    assert proc.returncode == 0 and proc.stdout == f"{tmp_path / 'trunk.pt'}\n", proc.stderr
    _remove_checkpoints(tmp_path)


def test_a_loadable_file_that_is_no_checkpoint_is_skipped_like_a_corrupt_one(ref, tmp_path):
    """Issue 19 item 3: after item 1, resuming failed with ``KeyError: 'config'`` in trainer.py; a
    trunk state dict loads with torch.load but holds none of what a run resumes from."""
    from mlvicx_core.checkpoints import load_model

    run = _copy_run(ref, tmp_path / "runs", checkpoints=(2, 3))
    ckpts = run / "checkpoints"
    trunk = load_model(ref.ckpts / "step-00000004.pt").trunk_state_dict()
    torch.save(trunk, ckpts / "step-00000004.pt")  # what `export-trunk CKPT CKPT` left
    (run / "done.json").unlink()

    proc = _run(_pretrain(ref.data, tmp_path / "runs"), _env(ref.site), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warning = next(line for line in _lines(proc.stderr) if "UserWarning" in line)
    assert (f"{ckpts / 'step-00000004.pt'} is not a training checkpoint (missing ['step', "
            "'model', 'optimizer', 'scheduler', 'rng', 'augment_rng', 'config']; it holds "
            f"{len(trunk)} entries: ['conv1.weight', 'bn1.weight',") in warning, warning
    assert warning.endswith(f"falling back to {ckpts / 'step-00000003.pt'}"), warning
    assert f"resuming {run} from step 3 (step-00000003.pt)" in proc.stdout
    ref.assert_same(run)
    _remove_checkpoints(tmp_path)
