"""Resume by default: a stage command interrupted mid-epoch, re-run as it was, ends with the weights
of an uninterrupted run, bit for bit; --restart starts a stage over; --resume is a no-op that says so.

The interrupted run is the real CLI in a subprocess whose second epoch sleeps after its first
optimisation step (so the signal reliably lands mid-epoch, after epoch 1's checkpoint), then gets
SIGINT, as from Ctrl-C.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from SinusAnomalyTraining import stages
from SinusAnomalyTraining.cli import main
from SinusAnomalyTraining.engine import load_checkpoint
from conftest import TINY_CONFIG, tiny_fold_context

REPO = Path(__file__).resolve().parents[1]

# The CLI with the second epoch (index 1) stopping after its first optimisation step: it touches
# the marker file, then sleeps until the signal. (SIGINT gets Python's own handler back: a test run
# started in the background inherits it ignored.)
STOPPED_MID_EPOCH = """
import signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)
from SinusAnomalyTraining import engine
marker, epoch_now = Path(sys.argv[1]), {"epoch": 0}
begin, train_epoch = engine._begin_epoch, engine.train_epoch

def noting_begin(loaders, seed, epoch, rank):
    epoch_now["epoch"] = epoch
    return begin(loaders, seed, epoch, rank)

def stopping_train_epoch(model, loader, loss_step_fn, *args, **kwargs):
    calls = [0]
    def step(net, batch, device):
        calls[0] += 1
        if epoch_now["epoch"] == 1 and calls[0] == min(2, len(loader)):
            marker.touch()
            time.sleep(120)
        return loss_step_fn(net, batch, device)
    return train_epoch(model, loader, step, *args, **kwargs)

engine._begin_epoch, engine.train_epoch = noting_begin, stopping_train_epoch
from SinusAnomalyTraining.cli import run_and_exit
run_and_exit(sys.argv[2:])
"""

STAGES = {  # stage kind -> (command words, its folder in fold0)
    "cae": (["train-cae"], "cae"),
    "residual pretraining": (["pretrain", "--method", "residual"], "pretrain"),
    "baseline pretraining": (["pretrain", "--method", "byol"], "pretrain_byol"),
    "fine-tuning": (["finetune", "--method", "none", "--fraction", "100"], "finetune/none/frac100"),
}


@pytest.fixture(scope="module")
def residuals_ready(tiny_dataset, tmp_path_factory):
    """Fold 0's CAE and residuals (the inputs of residual pretraining), made once."""
    run = tmp_path_factory.mktemp("inputs")
    ctx = tiny_fold_context(tiny_dataset, run)
    stages.train_cae(ctx)
    stages.compute_residuals(ctx)
    return ctx.fold_dir


def command(words, dataset_dir, run, config):
    return [*words, "--config", str(config), "--dataset", str(dataset_dir), "--run-dir", str(run), "--no-progress"]


def interrupt_mid_epoch(args, marker: Path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-c", STOPPED_MID_EPOCH, str(marker), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.01)
    assert marker.exists(), proc.communicate(timeout=60)[1][-3000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kind", list(STAGES))
def test_interrupted_stage_rerun_as_it_was_ends_with_the_uninterrupted_weights(kind, tiny_dataset, residuals_ready, tmp_path):
    words, folder = STAGES[kind]
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    runs = {name: tmp_path / name for name in ("whole", "cut")}
    if kind == "residual pretraining":
        for run in runs.values():
            for stage in ("cae", "residuals"):
                shutil.copytree(residuals_ready / stage, run / "fold0" / stage)
    assert main(command(words, tiny_dataset, runs["whole"], config)) == 0

    args = command(words, tiny_dataset, runs["cut"], config)
    stopped = interrupt_mid_epoch(args, tmp_path / "mid-epoch")
    assert stopped.returncode == 130 and "interrupted" in stopped.stderr, stopped.stderr[-3000:]
    cut = runs["cut"] / "fold0" / folder
    assert load_checkpoint(cut / "last.pt")["epoch"] == 1 and not (cut / "done.json").exists()

    assert main(args) == 0  # the same command line, no flag
    assert "resuming from" in (cut / "train.log").read_text(encoding="utf-8")
    whole = runs["whole"] / "fold0" / folder
    for name in ("last.pt", "best.pt"):
        assert_bitwise_equal(weights(whole / name), weights(cut / name))
    assert json.loads((whole / "history.json").read_text(encoding="utf-8")) == json.loads((cut / "history.json").read_text(encoding="utf-8"))


def test_restart_starts_a_finished_stage_over_and_resume_is_a_no_op_that_says_so(tiny_dataset, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    args = command(["finetune", "--method", "none", "--fraction", "50"], tiny_dataset, tmp_path / "run", config)
    stage = tmp_path / "run" / "fold0" / "finetune" / "none" / "frac50"
    assert main(args) == 0
    first = weights(stage / "last.pt")
    stamp = (stage / "done.json").stat().st_mtime_ns
    assert main(args) == 0 and (stage / "done.json").stat().st_mtime_ns == stamp  # finished: skipped
    assert main([*args, "--restart"]) == 0
    assert (stage / "done.json").stat().st_mtime_ns != stamp
    assert "starting from scratch" in (stage / "train.log").read_text(encoding="utf-8").split("fine-tuning fold 0")[-1]
    assert_bitwise_equal(first, weights(stage / "last.pt"))  # the same seed, the same weights

    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "--resume is not needed" in capsys.readouterr().out
    assert main([*args, "--resume", "--restart"]) == 2
    assert "contradict" in capsys.readouterr().err
    run_args = ["run", "--config", str(config), "--dataset", str(tiny_dataset), "--run-dir", str(tmp_path / "run"), "--restart"]
    with pytest.raises(SystemExit):  # run and experiment resume only: a whole run starts over in a new folder
        main(run_args)


def test_a_changed_setting_starts_an_interrupted_stage_over_instead_of_resuming_it(tiny_dataset, tmp_path):
    """Resuming is the default, but never from the checkpoint of other settings."""
    def finetune(run, lr):
        ctx = tiny_fold_context(tiny_dataset, run, finetune={"lr": lr})
        stages.finetune(ctx, "none", 50)
        return ctx.fold_dir / "finetune" / "none" / "frac50"

    stage = finetune(tmp_path / "run", 1e-3)
    (stage / "done.json").unlink()  # as if stopped after its last epoch: last.pt of lr 1e-3 is there
    assert load_checkpoint(stage / "last.pt")["epoch"] == TINY_CONFIG["finetune"]["epochs"]
    finetune(tmp_path / "run", 3e-3)
    assert "resuming from" not in (stage / "train.log").read_text(encoding="utf-8").split("fine-tuning fold 0")[-1]
    fresh = finetune(tmp_path / "fresh", 3e-3)
    assert_bitwise_equal(weights(fresh / "last.pt"), weights(stage / "last.pt"))
