"""The method's stages on a tiny prepared dataset: what each makes, pairing, staleness, pretrained transfer."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from SinusAnomalyLib.dataset import load_dataset
from SinusAnomalyTraining import stages
from SinusAnomalyTraining.config import config_from_dict
from SinusAnomalyTraining.engine import load_checkpoint
from conftest import TINY_CONFIG, tiny_fold_context


@pytest.fixture(scope="module")
def trained_fold(tiny_dataset, tmp_path_factory):
    """Fold 0 run through CAE, residuals, pretraining and both fine-tunings at 50 %."""
    run = tmp_path_factory.mktemp("run")
    ctx = tiny_fold_context(tiny_dataset, run)
    stages.train_cae(ctx)
    stages.compute_residuals(ctx)
    stages.pretrain(ctx)
    predictions = {m: stages.finetune(ctx, m, 50) for m in ("none", "residual")}
    return ctx, predictions


def test_cae_trains_on_training_normals_only(trained_fold):
    ctx, _ = trained_fold
    done = json.loads((ctx.fold_dir / "cae" / "done.json").read_text(encoding="utf-8"))
    labels = ctx.dataset.labels()
    train = ctx.indices("train")
    assert done["n_train"] == int((labels[train] == 0).sum())
    history = json.loads((ctx.fold_dir / "cae" / "history.json").read_text(encoding="utf-8"))
    assert len(history) == TINY_CONFIG["cae"]["epochs"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_residuals_are_paired_by_sample_id_and_in_unit_range(trained_fold):
    ctx, _ = trained_fold
    residuals = stages.load_residuals(ctx)
    assert set(residuals) == {r.sample_id for r in ctx.dataset.manifest}
    # recompute one residual from its own crop and compare: the pairing is by identity
    cae, _ = stages.load_cae(ctx)
    row = ctx.dataset.manifest[5]
    image = torch.from_numpy(stages.resize_crops(ctx.dataset.crops[5:6], 32))[:, None]
    expected = stages.residual_maps(cae, image, (1, 99), 3)[0, 0].numpy()
    assert np.allclose(residuals[row.sample_id], expected, atol=2e-3)  # stored as float16
    stacked = np.stack(list(residuals.values()))
    assert stacked.min() >= 0.0 and stacked.max() <= 1.0


def test_residuals_of_another_cae_are_refused(trained_fold, tmp_path):
    ctx, _ = trained_fold
    other = stages.FoldContext(ctx.dataset, ctx.config, tmp_path, 0, ctx.device, progress=False)
    (other.fold_dir / "cae").mkdir(parents=True)
    (other.fold_dir / "residuals").mkdir(parents=True)
    import shutil

    for name in ("residuals.npy", "residuals.json"):
        shutil.copy(ctx.fold_dir / "residuals" / name, other.fold_dir / "residuals" / name)
    # a CAE checkpoint with different weights
    payload = load_checkpoint(ctx.fold_dir / "cae" / "best.pt")
    payload["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in payload["model"].items()}
    torch.save(payload, other.fold_dir / "cae" / "best.pt")
    with pytest.raises(stages.StageInputError, match="different CAE"):
        stages.load_residuals(other)


def test_pretraining_needs_residuals(tiny_dataset, tmp_path):
    ctx = tiny_fold_context(tiny_dataset, tmp_path)
    with pytest.raises(stages.StageInputError, match="residuals"):
        stages.pretrain(ctx)


def test_finetuning_from_pretraining_starts_from_the_pretrained_encoder(trained_fold):
    ctx, _ = trained_fold
    pretrained = load_checkpoint(ctx.fold_dir / "pretrain" / "best.pt")["model"]
    model = stages.network_spec(ctx.config).classifier()
    model.load_encoder(pretrained)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, pretrained[f"encoder.{key}"])


def test_predictions_cover_validation_and_test_sinuses(trained_fold):
    ctx, predictions = trained_fold
    for method, path in predictions.items():
        rows = stages.read_predictions(path)
        by_split = {s: {r["sample_id"] for r in rows if r["split"] == s} for s in ("val", "test")}
        assert by_split["val"] == {ctx.dataset.manifest[i].sample_id for i in ctx.indices("val")}
        assert by_split["test"] == {ctx.dataset.manifest[i].sample_id for i in ctx.indices("test")}
        assert all(0.0 <= r["p_anomalous"] <= 1.0 for r in rows)


def test_finished_stages_are_skipped(trained_fold):
    ctx, predictions = trained_fold
    before = {p: p.stat().st_mtime_ns for p in (ctx.fold_dir / "cae" / "best.pt", predictions["none"])}
    stages.train_cae(ctx)
    stages.finetune(ctx, "none", 50)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_class_weights_balance_the_classes():
    weights = stages.class_weights(np.array([0, 0, 0, 1]))
    assert torch.allclose(weights, torch.tensor([4 / 6, 4 / 2]))
    assert float((weights * torch.tensor([3.0, 1.0])).sum()) == pytest.approx(4.0)


def test_run_command_runs_every_stage_evaluates_and_resumes(tiny_dataset, tmp_path, capsys):
    from SinusAnomalyTraining.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({k: v for k, v in TINY_CONFIG.items()}))
    run = tmp_path / "run"
    args = ["run", "--config", str(config), "--dataset", str(tiny_dataset), "--run-dir", str(run), "--no-progress"]
    assert main(args) == 0
    report = (run / "evaluation" / "report.md").read_text(encoding="utf-8")
    for method in ("none", "residual"):
        for fraction in (50, 100):
            assert f"| {method} | {fraction} % |" in report
            assert (run / "evaluation" / f"{method}_frac{fraction}" / "metrics.json").is_file()
    assert (run / "evaluation" / "roc_pr_frac50.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = (run / "evaluation" / "results.csv").read_text(encoding="utf-8").splitlines()
    assert len(results) == 1 + 4
    stamp = (run / "fold0" / "pretrain" / "best.pt").stat().st_mtime_ns
    assert main(args) == 0  # everything finished: skipped, same files
    assert (run / "fold0" / "pretrain" / "best.pt").stat().st_mtime_ns == stamp


def test_stage_command_without_its_input_fails_clearly(tiny_dataset, tmp_path, capsys):
    from SinusAnomalyTraining.cli import main

    code = main(["pretrain", "--config", "demo", "--dataset", str(tiny_dataset), "--run-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    assert "run the 'residuals' stage" in capsys.readouterr().err


def test_pretraining_and_finetuning_under_torchrun_with_two_cpu_processes(trained_fold, tmp_path):
    """DistributedDataParallel on CPU (gloo), as on several GPUs: both ranks run, rank 0 writes; the residuals
    are shared out over the ranks (the same maps as one process makes); the batch is the configured global one."""
    import re
    import shutil
    import socket
    import subprocess
    import sys

    ctx, _ = trained_fold
    run = tmp_path / "ddp"
    shutil.copytree(ctx.fold_dir / "cae", run / "fold0" / "cae")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    common = ["--config", str(config), "--dataset", str(ctx.dataset.root), "--run-dir", str(run), "--no-progress"]
    for stage in (["residuals"], ["pretrain"], ["finetune", "--method", "residual", "--fraction", "100"]):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(port), "-m", "SinusAnomalyTraining", *stage, *common],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.array_equal(np.load(run / "fold0" / "residuals" / "residuals.npy"), np.load(ctx.fold_dir / "residuals" / "residuals.npy"))
    said = re.search(r"batch (\d+) \(2 processes x (\d+)\), LARS lr ([0-9.e-]+)", (run / "fold0" / "pretrain" / "train.log").read_text(encoding="utf-8"))
    assert said and int(said[1]) == 2 * int(said[2]) == TINY_CONFIG["pretrain"]["batch_size"]
    assert float(said[3]) == pytest.approx(0.2 * int(said[1]) / 256, rel=1e-3)  # the rate of the global batch
    assert (run / "fold0" / "pretrain" / "best.pt").is_file()
    history = json.loads((run / "fold0" / "pretrain" / "history.json").read_text(encoding="utf-8"))
    assert len(history) == TINY_CONFIG["pretrain"]["epochs"]
    rows = stages.read_predictions(run / "fold0" / "finetune" / "residual" / "frac100" / "predictions.csv")
    assert {r["split"] for r in rows} == {"val", "test"}
    assert len(rows) == len(ctx.indices("val")) + len(ctx.indices("test"))  # written once, by rank 0


def test_grid_with_baselines_and_cae_ablation(tiny_dataset, tmp_path):
    """Two baselines plus the CAE ablation through the same pipeline; report in the paper's form."""
    config = copy.deepcopy(TINY_CONFIG)
    config.update(methods=["none", "residual", "simsiam", "spark"], fractions=[50, 100], folds=[0],
                  cae_fractions=[50, 100], cae_ablation_label_fraction=50,
                  pretext={"simsiam": {}, "spark": {"patch_size": 4}}, medicalnet_weights=None)
    from SinusAnomalyTraining import pipeline

    result = pipeline.run_pipeline(config_from_dict(config), tiny_dataset, tmp_path / "run", torch.device("cpu"), progress=False)
    fold = tmp_path / "run" / "fold0"
    assert (fold / "pretrain_simsiam" / "best.pt").is_file() and (fold / "pretrain_spark" / "best.pt").is_file()
    assert (fold / "cae_cae50" / "done.json").is_file()
    # the ablation CAE saw half of the training normals, a subset of the full CAE's
    assert json.loads((fold / "cae_cae50" / "done.json").read_text(encoding="utf-8"))["n_train"] == round(
        json.loads((fold / "cae" / "done.json").read_text(encoding="utf-8"))["n_train"] * 0.5)
    assert (fold / "finetune" / "residual_cae50" / "frac50" / "predictions.csv").is_file()
    report = (tmp_path / "run" / "evaluation" / "report.md").read_text(encoding="utf-8")
    assert "| simsiam | 50 % |" in report and "| spark | 100 % |" in report
    assert "| simsiam | 100 % |" in report and "0.92 (0.91-0.93)" in report  # beside it, the paper's SimSiam at 100 %
    # what a bundle from fold 0's CAE would get: a normal-sinus scale, no label check (the tiny cohort has no masks)
    assert "### Fold 0's CAE" in report and "not checked against lesion masks" in report
    assert [r["cae_fraction"] for r in result["ablation"]] == [50.0, 100.0]
    assert (tmp_path / "run" / "evaluation" / "metrics_vs_fraction.png").is_file()


def test_same_seed_same_result_with_augmentation(tiny_dataset, tmp_path):
    """Augmentation draws from the generators the training loop reseeds: two runs agree byte for byte."""
    config = copy.deepcopy(TINY_CONFIG)
    config["finetune"]["augment"]["prob"] = 1.0
    outputs = []
    for name in ("a", "b"):
        ctx = stages.FoldContext(load_dataset(tiny_dataset), config_from_dict(config), tmp_path / name, 0, torch.device("cpu"), progress=False)
        outputs.append(stages.finetune(ctx, "none", 100).read_bytes())
    assert outputs[0] == outputs[1]


def test_pretrain_command_writes_each_method_where_finetune_finds_it(trained_fold, tmp_path, capsys):
    """`pretrain --method M` for every pretraining method, then `finetune --method M` starts from that checkpoint."""
    import shutil

    from SinusAnomalyTraining.cli import main
    from SinusAnomalyTraining.config import PRETRAINING

    ctx, _ = trained_fold
    run = tmp_path / "run"
    for stage in ("cae", "residuals"):  # residual pretraining's inputs
        shutil.copytree(ctx.fold_dir / stage, run / "fold0" / stage)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY_CONFIG, "pretrain": {**TINY_CONFIG["pretrain"], "epochs": 1},
                                  "finetune": {**TINY_CONFIG["finetune"], "epochs": 1}}))
    common = ["--config", str(config), "--dataset", str(ctx.dataset.root), "--run-dir", str(run), "--no-progress"]
    code = main(["finetune", "--method", "byol", "--fraction", "50", *common])
    assert code == 2 and "run the 'pretrain --method byol' stage for fold0 first" in capsys.readouterr().err
    for method in PRETRAINING:
        assert main(["pretrain", "--method", method, *common]) == 0
        checkpoint = run / "fold0" / ("pretrain" if method == "residual" else f"pretrain_{method}") / "best.pt"
        assert f"pretrained ({method}): {checkpoint}" in capsys.readouterr().out
        assert main(["finetune", "--method", method, "--fraction", "50", *common]) == 0
        done = json.loads((run / "fold0" / "finetune" / method / "frac50" / "done.json").read_text(encoding="utf-8"))
        assert done["made_from"]["pretrained_sha256"] == stages.sha256_file(checkpoint)


def test_fine_tuning_at_another_crop_size_starts_over_instead_of_counting_as_finished(tiny_dataset, tmp_path, monkeypatch):
    """The classifier takes any crop size, so nothing else would notice weights trained at the old one."""
    stages.finetune(tiny_fold_context(tiny_dataset, tmp_path / "run", finetune={"epochs": 1}), "none", 50)
    stage = tmp_path / "run" / "fold0" / "finetune" / "none" / "frac50"
    assert json.loads((stage / "done.json").read_text(encoding="utf-8"))["made_from"]["crop_size"] == 32
    asked = []  # what the stage runner is asked to make at 64^3 (not trained here: 64^3 takes long)
    monkeypatch.setattr(stages, "run_training_stage", lambda ctx, stage_dir, made_from, *a, **k: asked.append((stage_dir, made_from)))
    stages.finetune(tiny_fold_context(tiny_dataset, tmp_path / "run", crop_size=64, finetune={"epochs": 1}), "none", 50)
    (stage_dir, made_from), = asked
    assert stage_dir == stage and made_from["crop_size"] == 64 and not stages._finished(stage, made_from)


def test_a_stage_recorded_before_an_augmentation_setting_existed_is_not_retrained(tiny_dataset, tmp_path):
    """Upgrading adds settings (gamma, blur) whose off value changes nothing: a run resumed with the
    new code must not retrain what it finished; turning the setting on must."""
    from SinusAnomalyTraining.config import AUGMENT_OFF, AugmentSettings

    assert AUGMENT_OFF == {f.name: f.default for f in dataclasses.fields(AugmentSettings) if f.name in AUGMENT_OFF}
    run = tmp_path / "run"
    stages.finetune(tiny_fold_context(tiny_dataset, run, finetune={"epochs": 1}), "none", 50)
    stage = run / "fold0" / "finetune" / "none" / "frac50"
    for name in ("done.json", "started.json"):  # as an older version recorded them: without the new keys
        record = json.loads((stage / name).read_text(encoding="utf-8"))
        for key in AUGMENT_OFF:
            del record["made_from"]["finetune"]["augment"][key]
        (stage / name).write_text(json.dumps(record), encoding="utf-8")
    weights = stage / "best.pt"
    before = weights.stat().st_mtime_ns
    stages.finetune(tiny_fold_context(tiny_dataset, run, finetune={"epochs": 1}), "none", 50)
    assert weights.stat().st_mtime_ns == before
    blurred = {"epochs": 1, "augment": {"blur_sigma_max": 0.5}}
    stages.finetune(tiny_fold_context(tiny_dataset, run, finetune=blurred), "none", 50)
    assert weights.stat().st_mtime_ns != before
    done = json.loads((stage / "done.json").read_text(encoding="utf-8"))["made_from"]["finetune"]["augment"]
    assert done["blur_sigma_max"] == 0.5


def test_same_inputs_ignores_only_settings_at_their_off_value():
    from SinusAnomalyTraining.stagerunner import same_inputs

    old = {"finetune": {"augment": {"prob": 0.5}}, "folds": [{"noise_std": 0.1}]}
    assert same_inputs(old, {"finetune": {"augment": {"prob": 0.5, "gamma_max": 1.0, "blur_sigma_max": 0.0}},
                             "folds": [{"noise_std": 0.1, "gamma_max": 1.0}]})
    assert not same_inputs(old, {"finetune": {"augment": {"prob": 0.5, "gamma_max": 2.0}}, "folds": [{"noise_std": 0.1}]})
    assert not same_inputs(old, {"finetune": {"augment": {"prob": 0.4}}, "folds": [{"noise_std": 0.1}]})
    assert not same_inputs(None, old)


def test_a_dataset_whose_crops_changed_is_new_data_to_the_stages(tmp_path, monkeypatch):
    """Re-prepared with another extraction, the manifest and splits can stay byte for byte the same
    while every crop differs: the stages' dataset fingerprint includes the crops' checksum."""
    import SinusAnomalyLib.dataset as dataset_module
    from conftest import _FakeExtraction, make_tiny_dataset, synthetic_crop

    root = tmp_path / "tiny"
    out = make_tiny_dataset(root, monkeypatch, n_patients=12)
    before = {name: (out / name).read_bytes() for name in ("manifest.csv", "splits.json", "crops.npy")}
    fingerprint = tiny_fold_context(out, tmp_path / "run").dataset_fingerprint
    rng = np.random.default_rng(99)
    monkeypatch.setattr(dataset_module, "extract_sinuses",
                        lambda path, *a, **k: _FakeExtraction({side: synthetic_crop(rng, False) for side in ("left", "right")}))
    for image in (root / "images").iterdir():  # changed images: extracted again
        image.write_bytes(b"another placeholder, another size")
    dataset_module.prepare_dataset(root / "images", root / "labels.csv", out, n_folds=2, test_fraction=0.2,
                                   fractions=(0.5, 1.0), seed=0, progress=False)
    assert (out / "manifest.csv").read_bytes() == before["manifest.csv"] and (out / "splits.json").read_bytes() == before["splits.json"]
    assert (out / "crops.npy").read_bytes() != before["crops.npy"]
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["crops"]["sha256"] == stages.sha256_file(out / "crops.npy")
    assert tiny_fold_context(out, tmp_path / "run").dataset_fingerprint != fingerprint
