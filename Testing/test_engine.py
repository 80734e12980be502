"""Training infrastructure: LARS, warm-up/cosine schedule, checkpoints, exact resume, DDP on CPU."""
from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from SinusAnomalyLib.errors import OutputError, SinusAnomalyError
from SinusAnomalyTraining import engine, runtime
from SinusAnomalyTraining.engine import CheckpointError, Checkpointer, fit, load_checkpoint
from SinusAnomalyLib.models import parameter_groups
from SinusAnomalyTraining.optim import LARS, WarmupCosine, scaled_lr

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------- helpers

class AugmentedVolumes(Dataset):
    """Fixed random 8^3 volumes with random flips and noise drawn from torch, NumPy and ``random``."""

    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 8, 8, 8, generator=g)
        self.y = self.x.mean(dim=(1, 2, 3, 4)) * 4.0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        x = x + 0.1 * torch.rand_like(x)
        x = x + float(np.random.uniform(-0.05, 0.05)) + random.uniform(-0.05, 0.05)
        return x, self.y[i]


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.pool = nn.AdaptiveAvgPool3d(2)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(32, 1)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)
        return self.fc(self.drop(h))


def mse_step(model, batch, device):
    x, y = batch
    return nn.functional.mse_loss(model(x.to(device)).squeeze(1), y.to(device))


class Interrupt(Exception):
    pass


def make_run(init_seed: int, epochs: int = 4):
    torch.manual_seed(init_seed)
    model = TinyNet()
    train = DataLoader(AugmentedVolumes(), batch_size=6, shuffle=True)
    val = DataLoader(AugmentedVolumes(12), batch_size=6, shuffle=False)
    opt = LARS(parameter_groups(model, weight_decay=1e-4), lr=scaled_lr(0.2, 6, base_batch=2), eta=0.02)
    sched = WarmupCosine.for_loader(opt, train, epochs=epochs, warmup_epochs=1)
    return model, train, val, opt, sched


def run_fit(run_dir, init_seed=0, seed=11, resume=False, interrupt_at_step=None, epochs=4, progress=False, log=None):
    model, train, val, opt, sched = make_run(init_seed, epochs)
    calls = {"n": 0}

    def step(model, batch, device):
        if model.training:
            calls["n"] += 1
            if interrupt_at_step is not None and calls["n"] == interrupt_at_step:
                raise Interrupt
        return mse_step(model, batch, device)

    history = fit(model, train, val, step, epochs, opt, sched, torch.device("cpu"), Checkpointer(run_dir),
                  resume=resume, progress=progress, log=log, seed=seed, extra={"note": "test", "sizes": [1, 2]})
    return model, opt, sched, history, train


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def partial_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if "partial" in p.name]


# -------------------------------------------------------------------------------------------- LARS

def test_lars_matches_the_update_rule_and_skips_excluded_groups():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))          # |w| = 5
    b = nn.Parameter(torch.tensor([1.0, -2.0]))
    lr, mom, wd, eta = 0.5, 0.9, 0.1, 0.01
    opt = LARS([{"params": [w]}, {"params": [b], "lars_exclude": True, "weight_decay": 0.3}],
               lr=lr, momentum=mom, weight_decay=wd, eta=eta)
    gw, gb = [0.6, 0.8], [0.5, 0.5]                       # |gw| = 1

    def ref_lars(wv, v):
        wn = math.hypot(*wv)
        gn = math.hypot(*gw)
        trust = eta * wn / (gn + wd * wn)
        d = [trust * (g + wd * x) for g, x in zip(gw, wv)]
        v = d if v is None else [mom * a + c for a, c in zip(v, d)]
        return [x - lr * a for x, a in zip(wv, v)], v

    w_ref, v_ref = [3.0, 4.0], None
    b_ref, vb = [1.0, -2.0], None
    for _ in range(3):
        w.grad = torch.tensor(gw)
        b.grad = torch.tensor(gb)
        opt.step()
        w_ref, v_ref = ref_lars(w_ref, v_ref)
        vb = list(gb) if vb is None else [mom * a + g for a, g in zip(vb, gb)]   # plain momentum SGD
        b_ref = [x - lr * a for x, a in zip(b_ref, vb)]
        assert torch.allclose(w.detach(), torch.tensor(w_ref), atol=1e-6, rtol=0)
        assert torch.allclose(b.detach(), torch.tensor(b_ref), atol=1e-6, rtol=0)
    # First step by hand: d = g + 0.1 w = (0.9, 1.2); trust = 0.01*5/(1+0.5) = 1/30; w -= 0.5 * d/30.
    w2 = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt2 = LARS([w2], lr=lr, momentum=mom, weight_decay=wd, eta=eta)
    w2.grad = torch.tensor(gw)
    opt2.step()
    assert torch.allclose(w2.detach(), torch.tensor([2.985, 3.98]), atol=1e-6, rtol=0)
    # An excluded parameter moves by exactly lr * grad at the first step: no decay, no trust ratio.
    b2 = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt3 = LARS([{"params": [b2], "lars_exclude": True}], lr=lr, weight_decay=0.5, eta=eta)
    b2.grad = torch.tensor(gb)
    opt3.step()
    assert torch.allclose(b2.detach(), torch.tensor([0.75, -2.25]), atol=1e-7, rtol=0)


def test_lars_zero_weight_uses_unit_trust_ratio():
    p = nn.Parameter(torch.zeros(3))
    opt = LARS([p], lr=0.1, weight_decay=0.1, eta=0.001)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([-0.1, -0.2, -0.3]))


def test_parameter_groups_feed_lars_exclusion():
    model = TinyNet()
    groups = parameter_groups(model, weight_decay=1e-4)
    adapted = {id(p) for p in groups[0]["params"]}
    excluded = {id(p) for p in groups[1]["params"]}
    assert groups[0]["lars_exclude"] is False and groups[0]["weight_decay"] == 1e-4
    assert groups[1]["lars_exclude"] is True
    assert adapted == {id(model.conv.weight), id(model.fc.weight)}
    assert excluded == {id(model.conv.bias), id(model.bn.weight), id(model.bn.bias), id(model.fc.bias)}
    opt = LARS(groups, lr=0.1)
    assert [g["lars_exclude"] for g in opt.param_groups] == [False, True]


def test_scaled_lr():
    assert scaled_lr(0.2, 256) == pytest.approx(0.2)
    assert scaled_lr(0.2, 64) == pytest.approx(0.05)
    assert scaled_lr(0.1, 32, base_batch=16) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        scaled_lr(0.2, 0)


# -------------------------------------------------------------------------------- WarmupCosine

def lr_trace(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_shape_and_clamp():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = WarmupCosine(opt, warmup_steps=4, total_steps=12, final_lr=0.01)
    lrs = lr_trace(sched, opt, 20)
    assert lrs[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])                 # linear warm-up
    assert lrs[4] == pytest.approx(0.4)                                    # cosine starts at base
    assert lrs[8] == pytest.approx(0.01 + 0.39 * 0.5)                      # cosine midpoint
    assert all(a >= b for a, b in zip(lrs[4:13], lrs[5:13]))               # decreasing
    assert lrs[12] == pytest.approx(0.01)                                  # final at total_steps
    assert lrs[12:] == pytest.approx([0.01] * 8)                           # clamped afterwards
    assert sched.last_epoch == 20


def test_warmup_cosine_state_dict_round_trip(tmp_path):
    def build():
        p = nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([{"params": [p]}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1}], lr=0.4)
        return opt, WarmupCosine(opt, warmup_steps=3, total_steps=10)

    opt, sched = build()
    lr_trace(sched, opt, 5)
    torch.save({"s": sched.state_dict(), "o": opt.state_dict()}, tmp_path / "s.pt")
    expected = lr_trace(sched, opt, 8)
    opt2, sched2 = build()
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2.load_state_dict(state["o"])
    sched2.load_state_dict(state["s"])
    assert sched2.last_epoch == 5 and sched2.total_steps == 10 and sched2.warmup_steps == 3
    assert lr_trace(sched2, opt2, 8) == pytest.approx(expected)
    assert sched2.get_last_lr()[1] == pytest.approx(0.0)                   # second group also ended at 0


def test_warmup_cosine_from_loader_length_and_validation():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    loader = DataLoader(list(range(10)), batch_size=3)                     # 4 batches per epoch
    sched = WarmupCosine.for_loader(opt, loader, epochs=5, warmup_epochs=2)
    assert (sched.warmup_steps, sched.total_steps) == (8, 20)
    with pytest.raises(ValueError):
        WarmupCosine(opt, warmup_steps=5, total_steps=4)
    with pytest.raises(ValueError):
        WarmupCosine(opt, warmup_steps=0, total_steps=0)


# ------------------------------------------------------------------------------------ resume

def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    epochs = 4
    full_model, full_opt, _, full_hist, loader = run_fit(tmp_path / "full", epochs=epochs)
    steps = len(loader)
    assert steps == 4

    # Interrupted in the middle of epoch 3 (after epoch 2's checkpoint); nothing of epoch 3 is kept.
    with pytest.raises(Interrupt):
        run_fit(tmp_path / "cut", epochs=epochs, interrupt_at_step=2 * steps + 2)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    # "New process": fresh objects, different initial weights and scrambled global RNGs.
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    res_model, res_opt, _, res_hist, _ = run_fit(tmp_path / "cut", init_seed=5, resume=True, epochs=epochs)

    assert_same_state(full_model.state_dict(), res_model.state_dict())
    assert res_hist == full_hist and len(res_hist) == epochs
    for a, b in zip(full_opt.state_dict()["state"].values(), res_opt.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert json.loads((tmp_path / "cut" / "history.json").read_text(encoding="utf-8")) == full_hist

    # The randomness is real: another seed gives other weights.
    other_model, *_ = run_fit(tmp_path / "other", seed=12, epochs=epochs)
    assert not torch.equal(other_model.fc.weight, full_model.fc.weight)


def test_fit_outputs_best_checkpoint_history_files_and_no_temp_files(tmp_path):
    with runtime.setup_run_logging(tmp_path, console=False) as log:
        model, opt, sched, history, loader = run_fit(tmp_path, epochs=3, progress=True, log=log)
    assert "epoch 3/3: train_loss" in (tmp_path / "train.log").read_text(encoding="utf-8")
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(set(h) >= {"train_loss", "val_loss", "lr"} for h in history)
    assert history[-1]["lr"] == pytest.approx(0.0)                          # schedule ended
    assert sched.last_epoch == 3 * len(loader)                              # one scheduler step per batch

    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert last["format"] == engine.CHECKPOINT_FORMAT and last["epoch"] == 3
    assert last["history"] == history and last["extra"] == {"note": "test", "sizes": [1, 2]}
    assert_same_state(last["model"], model.state_dict())
    best_epoch = min(history, key=lambda h: h["val_loss"])["epoch"]
    assert best["epoch"] == best_epoch
    assert best["best_metric"] == pytest.approx(min(h["val_loss"] for h in history))
    assert isinstance(last["rng"]["torch"], torch.Tensor)

    assert json.loads((tmp_path / "history.json").read_text(encoding="utf-8")) == history
    csv_lines = (tmp_path / "history.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0] == "epoch,train_loss,val_loss,lr" and len(csv_lines) == 4
    assert partial_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "history.csv", "history.json", "last.pt",
                                                           "train.log"]

    # Starting again in the same folder without resume would overwrite a run: refused.
    with pytest.raises(CheckpointError, match="last.pt"):
        run_fit(tmp_path, epochs=3)
    # Resuming a finished run trains nothing and returns its history.
    _, _, _, again, _ = run_fit(tmp_path, epochs=3, resume=True)
    assert again == history


# ---------------------------------------------------------------------------------- checkpoints

def test_checkpoint_rejects_foreign_files_by_name(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match="junk.pt") as err:
        load_checkpoint(junk)
    assert isinstance(err.value, SinusAnomalyError)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt.*not a SinusAnomaly checkpoint"):
        load_checkpoint(foreign)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(CheckpointError, match="tensor.pt"):
        load_checkpoint(tensor_file)
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")

    # A foreign file sitting at last.pt is refused on resume, naming it.
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"w": torch.zeros(1)}, run / "last.pt")
    with pytest.raises(CheckpointError, match="last.pt"):
        run_fit(run, epochs=1, resume=True)


def test_checkpoint_save_is_atomic_and_plain(tmp_path, monkeypatch):
    model = TinyNet()
    opt = LARS(parameter_groups(model, 0.0), lr=0.1)
    ck = Checkpointer(tmp_path)
    assert ck.save(1, model, opt, best_metric=0.5, is_best=True) == tmp_path / "last.pt"
    before = (tmp_path / "last.pt").read_bytes()
    payload = torch.load(tmp_path / "last.pt", weights_only=True)
    assert payload["epoch"] == 1 and payload["best_metric"] == 0.5
    assert (tmp_path / "best.pt").read_bytes() == before

    # A write that dies half-way leaves the previous last.pt and no temporary file.
    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(engine.torch, "save", broken_save)
    with pytest.raises(OutputError, match="last.pt: cannot be written: disk full"):  # exit 2 naming the file
        ck.save(2, model, opt)
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert partial_files(tmp_path) == []

    # Custom objects cannot go into a checkpoint (they would not load with weights_only=True).
    with pytest.raises(TypeError, match="extra"):
        ck.save(2, model, opt, extra={"bad": object()})
    assert partial_files(tmp_path) == []

    # Restoring into a different model names the file.
    with pytest.raises(CheckpointError, match="last.pt"):
        ck.restore(ck.load_latest(), nn.Linear(2, 2))

    # Only the main process writes.
    monkeypatch.setattr(runtime, "is_main_process", lambda: False)
    other = Checkpointer(tmp_path / "rank1")
    assert other.save(1, model, opt) is None
    other.write_history([{"epoch": 1}])
    assert not (tmp_path / "rank1").exists()


def test_rng_state_round_trip():
    state = engine.capture_rng_state()
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    engine.restore_rng_state(state)
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


# ----------------------------------------------------------------------------------------- runtime

def test_select_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.select_device("auto") == torch.device("cpu")
    assert runtime.select_device("cpu") == torch.device("cpu")
    with pytest.raises(runtime.DeviceError, match="CUDA is not available"):
        runtime.select_device("cuda")
    with pytest.raises(SinusAnomalyError, match="unknown device"):
        runtime.select_device("tpu")


def test_single_process_helpers_and_logging(tmp_path):
    assert runtime.world_size() == 1 and runtime.is_main_process() and runtime.init_distributed("cpu").world_size == 1
    assert runtime.distributed_sampler(list(range(4)), shuffle=True) is None
    t = torch.arange(4.0)
    assert torch.equal(runtime.all_gather_tensor(t), t) and runtime.reduce_mean(2.5) == 2.5
    runtime.barrier()
    cpu = torch.device("cpu")
    with runtime.autocast_context(cpu, True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not runtime.make_grad_scaler(cpu, True).is_enabled()
    g1, g2 = runtime.make_generator(3, 1), runtime.make_generator(3, 1)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    with runtime.setup_run_logging(tmp_path, console=False) as log:
        log.info("hello run")
    assert "hello run" in (tmp_path / "train.log").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------- DDP

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_ddp_two_cpu_processes(tmp_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(HERE / "ddp_worker.py"), str(run_dir), str(out_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0 = json.loads((out_dir / "rank0.json").read_text(encoding="utf-8"))
    r1 = json.loads((out_dir / "rank1.json").read_text(encoding="utf-8"))
    assert r0["backend"] == r1["backend"] == "gloo"
    assert r0["sampler"] == "DistributedSampler" and r0["steps_per_epoch"] == 2   # 16 samples / 2 ranks / 4
    assert r0["written"] == [str(run_dir / "last.pt")] * 2 and r1["written"] == []
    assert r0["history"] == r1["history"] and len(r0["history"]) == 2          # losses reduced over ranks
    assert r0["gathered"] == [0.0, 1.0, 1.0] and r0["mean"] == 0.5

    w0 = torch.load(out_dir / "rank0.pt", weights_only=True)
    w1 = torch.load(out_dir / "rank1.pt", weights_only=True)
    assert_same_state(w0, w1)
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])              # unwrapped before saving
    assert_same_state(ckpt["model"], w0)
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "history.csv", "history.json", "last.pt"]


def test_deterministic_setting_chooses_the_cudnn_kernels_and_old_configs_still_load(tmp_path):
    from SinusAnomalyLib.errors import ConfigError
    from SinusAnomalyTraining.config import load_config

    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        runtime.set_deterministic(False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        runtime.seed_everything(0, deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before
    assert [load_config(name).deterministic for name in ("paper", "grid-paper", "demo", "grid-cpu")] == [False, False, True, True]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"num_workers": 4, "seed": 3}))  # a config.json of an earlier version
    assert load_config(old).seed == 3
    old.write_text(json.dumps({"deterministic": "yes"}))
    with pytest.raises(ConfigError, match="deterministic"):
        load_config(old)


def test_channels_last_setting_trains_the_same_stage_in_another_memory_layout(tiny_dataset, tmp_path):
    """channels_last_3d changes the layout, not the computation: same losses to rounding, weights load into a plain model."""
    from conftest import tiny_fold_context
    from SinusAnomalyTraining import stages

    histories = {}
    for layout in (False, True):
        ctx = tiny_fold_context(tiny_dataset, tmp_path / str(layout), channels_last=layout)
        best = stages.train_cae(ctx)
        histories[layout] = [row["train_loss"] for row in json.loads((best.parent / "history.json").read_text(encoding="utf-8"))]
        model = stages.network_spec(ctx.config).cae()
        model.load_state_dict(load_checkpoint(best)["model"])
        assert all(p.is_contiguous() for p in model.parameters())
    assert np.allclose(histories[True], histories[False], rtol=1e-3)


# ------------------------------------------------------------------------ BatchNorm re-estimation

def test_recompute_batchnorm_statistics_averages_over_the_whole_loader():
    """The running mean becomes the mean over every batch of the loader (not an exponential
    average weighted to the last batches), and the layer's momentum is restored."""
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model[1].running_mean.fill_(100.0)
    batches = [torch.randn(4, 3, generator=torch.Generator().manual_seed(k)) + k for k in range(3)]

    def loss_step(net, batch, device):
        return net(batch.to(device)).sum()

    engine.recompute_batchnorm_statistics(model, batches, loss_step, torch.device("cpu"), amp=False)
    with torch.no_grad():
        expected = model[0](torch.cat(batches)).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected)
    assert model[1].momentum == 0.1
    assert model.training  # left in train mode, as after a training epoch


def test_fit_with_recomputed_batchnorm_validates_with_the_recomputed_statistics():
    """With ``recompute_batchnorm`` the statistics that validation (eval mode) uses are those of
    the final weights over the training data: re-running the recomputation changes nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    data = [(torch.randn(6, 8), torch.randn(6, 1)) for _ in range(3)]

    def loss_step(net, batch, device):
        return nn.functional.mse_loss(net(batch[0].to(device)), batch[1].to(device))

    fit(model, data, data, loss_step, 2, torch.optim.SGD(model.parameters(), lr=0.1), None, torch.device("cpu"), None,
        progress=False, recompute_batchnorm=True)
    after_fit = model[2].running_mean.clone()
    engine.recompute_batchnorm_statistics(model, data, loss_step, torch.device("cpu"), amp=False)
    torch.testing.assert_close(model[2].running_mean, after_fit)
