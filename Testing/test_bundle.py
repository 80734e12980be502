"""Model bundles and classify: export of a run trained in the test, end-to-end classification of a
synthetic head, and every kind of bad bundle."""
from __future__ import annotations

import copy
import io
import json
import shutil
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch

from SinusAnomalyLib.bundle import BundleError, load_bundle
from SinusAnomalyLib.modelstore import models_folder, resolve_bundle
from SinusAnomalyLib.dataset import load_dataset
from SinusAnomalyLib.imageio import write_image
from SinusAnomalyLib.reference import load_reference
from SinusAnomalyLib.synth import SynthParams, make_case
from SinusAnomalyLib.errors import ImageError, SinusAnomalyError
from SinusAnomalyTraining import pipeline, stages
from SinusAnomalyTraining.evaluation import best_f1_threshold, best_youden_threshold
from SinusAnomalyTraining.cli import main
from SinusAnomalyTraining.commands import demo as demo_command
from SinusAnomalyTraining.commands.demo import OTHER_ANATOMIES, classify_other_anatomies
from SinusAnomalyTraining.config import config_from_dict
from SinusAnomalyTraining.export import bundle_metrics, export_run
from conftest import TINY_CONFIG


@pytest.fixture(scope="module")
def bundle_path(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    config = copy.deepcopy(TINY_CONFIG)
    config.update(methods=["residual"], fractions=[100], folds=[0, 1])
    pipeline.run_pipeline(config_from_dict(config), tiny_dataset, root / "run", torch.device("cpu"), progress=False)
    return export_run(root / "run", root / "tiny.sabundle", "residual", 100)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    case = make_case("classify-me", np.random.default_rng(42), SynthParams(),
                     anomalies={"left": "fully_occupied", "right": None})
    path = tmp_path_factory.mktemp("head") / "head.nii.gz"
    write_image(case.image, path)
    return case, path


def test_bundle_holds_every_fold_and_its_metadata(bundle_path):
    bundle = load_bundle(bundle_path)
    assert len(bundle.classifiers) == 2 and bundle.cae is not None
    # every fold keeps its own weights (folds are loaded into copies of one built network)
    first, second = (dict(m.named_parameters()) for m in bundle.classifiers)
    assert all(first[k].data_ptr() != second[k].data_ptr() for k in first)
    assert not all(torch.equal(first[k], second[k]) for k in first)
    meta = bundle.meta
    assert meta["format"] == "sinus-anomaly-bundle" and meta["format_version"] == 3
    assert meta["cae_fold"] == 0 and meta["folds"] == [0, 1]
    assert meta["reference_sha256"] == load_reference().sha256
    assert 0.0 < meta["threshold"] < 1.0 and len(meta["fold_thresholds"]) == 2
    assert "Youden" in meta["threshold_rule"]  # the default: sensitivity and specificity weigh alike
    assert meta["crop"]["model_crop_size"] == 32 and meta["crop"]["size_voxels"] == 64
    assert meta["metrics"]["auroc"]["n"] == 2
    # per lesion type (the tiny cohort's anomalies are all polyps), at the rule the bundle decides with
    assert meta["metrics"]["auroc[polyp]"]["n"] == meta["metrics"]["sensitivity_at_youden_threshold[polyp]"]["n"] == 2
    assert 0.0 <= meta["metrics"]["specificity_at_youden_threshold"]["mean"] <= 1.0
    # threshold-dependent numbers only at the rule the bundle decides with, named after it
    assert not [k for k in meta["metrics"] if "_at_" in k and "_at_youden_threshold" not in k], sorted(meta["metrics"])
    assert "Youden" in meta["metrics_threshold"] and "median" in meta["metrics_threshold"]
    assert meta["training_data"]["counts"]["patients"] == 20
    # heat-map scale and OOD range fitted on the run's sinuses; the tiny cohort has no lesion masks to choose a label level on
    assert 0 <= meta["heatmap"]["residual_median"] < meta["heatmap"]["residual_high"]
    assert 0 < meta["ood"]["low"] <= meta["ood"]["high"] and meta["ood"]["test_sinuses"] > 0
    assert "label_validation" not in meta and meta["residual_threshold"] == 0.5
    assert {"torch", "monai", "sinus_anomaly"} <= set(meta["versions"])


def test_export_chooses_the_verdict_threshold_by_the_rule_asked_for(bundle_path, tmp_path):
    run = bundle_path.parent / "run"
    f1 = load_bundle(export_run(run, tmp_path / "f1.sabundle", "residual", 100, threshold_rule="f1")).meta
    assert "F1" in f1["threshold_rule"]
    assert not [k for k in f1["metrics"] if "_at_" in k and "_at_f1_threshold" not in k], sorted(f1["metrics"])
    rows = [r for r in stages.read_predictions(run / "fold0" / "finetune" / "residual" / "frac100" / "predictions.csv")
            if r["split"] == "val"]
    y, p = np.array([r["label"] for r in rows]), np.array([r["p_anomalous"] for r in rows])
    assert f1["fold_thresholds"][0] == pytest.approx(float(np.clip(best_f1_threshold(y, p), 1e-300, 1 - 1e-16)))
    assert load_bundle(bundle_path).meta["fold_thresholds"][0] == pytest.approx(
        float(np.clip(best_youden_threshold(y, p), 1e-300, 1 - 1e-16)))
    with pytest.raises(SinusAnomalyError, match="unknown threshold rule"):
        export_run(run, tmp_path / "x.sabundle", "residual", 100, threshold_rule="accuracy")


def test_a_bundle_records_threshold_metrics_only_at_its_own_rule_named_after_it():
    m = lambda mean: {"mean": mean, "low": None, "high": None, "n": 2}  # noqa: E731
    summary = {"auroc": m(0.9), "auprc": m(0.8), "f1_at_val_threshold": m(0.7), "f1_at_0.5": m(0.6),
               "specificity_at_val_threshold": m(0.5), "f1_at_youden_threshold": m(0.65),
               "recall_at_youden_threshold": m(0.75), "specificity_at_youden_threshold": m(0.85),
               "auroc[polyp]": m(0.95), "sensitivity_at_youden_threshold[polyp]": m(0.55), "threshold": m(0.3)}
    youden = bundle_metrics(summary, "youden")
    assert set(youden) == {"auroc", "auprc", "f1_at_youden_threshold", "recall_at_youden_threshold",
                           "specificity_at_youden_threshold", "auroc[polyp]", "sensitivity_at_youden_threshold[polyp]"}
    assert youden["f1_at_youden_threshold"] == {"mean": 0.65, "n": 2}  # not the F1 rule's 0.7
    f1 = bundle_metrics(summary, "f1")  # the F1 rule's numbers, under its name; nothing at Youden's
    assert set(f1) == {"auroc", "auprc", "f1_at_f1_threshold", "specificity_at_f1_threshold", "auroc[polyp]"}
    assert f1["f1_at_f1_threshold"]["mean"] == 0.7


def test_classify_writes_results_on_the_input_grid(bundle_path, head, tmp_path, capsys):
    case, path = head
    out = tmp_path / "result"
    assert main(["classify", str(path), "--model", str(bundle_path), "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    for side in ("left", "right"):
        entry = result["sides"][side]
        assert 0.0 <= entry["probability"] <= 1.0
        assert entry["verdict"] in ("normal", "anomalous")
        assert (entry["verdict"] == "anomalous") == (entry["probability"] >= entry["threshold"])
        assert entry["spread"] >= 0 and len(entry["fold_probabilities"]) == 2
        assert np.linalg.norm(np.subtract(entry["center_ras_mm"], case.centers_ras[side])) < 10.0
        assert (out / entry["crop_file"]).is_file() and "crop" in entry["crop_file"]
    head_img = nib.load(str(path))
    for name in ("heatmap.nii.gz", "labelmap.nii.gz"):
        overlay = nib.load(str(out / name))
        assert overlay.shape == head_img.shape
        assert np.allclose(overlay.affine, head_img.affine, atol=1e-4)
    heat = np.asarray(nib.load(str(out / "heatmap.nii.gz")).dataobj)
    assert 0.0 <= heat.min() and heat.max() <= 1.0 and heat.max() > 0.1
    labels = np.asarray(nib.load(str(out / "labelmap.nii.gz")).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    for side, value in (("left", 1), ("right", 2)):
        if result["sides"][side]["verdict"] == "normal":
            assert not (labels == value).any()
        assert result["sides"][side]["anomalous_volume_ml"] is None  # no lesion masks validated its volume: a coarse region
    assert result["label_map"]["volume"] == "coarse region" and result["label_map"]["heatmap_scale"] == "normal sinuses"


def test_batch_classify_goes_past_a_bad_scan(bundle_path, head, tmp_path):
    _, path = head
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "good.nii.gz").write_bytes(path.read_bytes())
    (folder / "broken.nii.gz").write_bytes(path.read_bytes()[:5000])
    code = main(["classify", str(folder), "--model", str(bundle_path), "--out", str(tmp_path / "out")])
    assert code == 1
    rows = (tmp_path / "out" / "results.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("image,status,error")
    assert len(rows) == 3
    by_name = {r.split(",")[0].rsplit("/", 1)[-1]: r for r in rows[1:]}
    assert ",failed," in by_name["broken.nii.gz"] and "truncated" in by_name["broken.nii.gz"]
    assert ",ok," in by_name["good.nii.gz"]
    assert (tmp_path / "out" / "good" / "result.json").is_file()


def test_bundle_found_by_name_in_the_models_folder(bundle_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SINUS_ANOMALY_MODELS", str(tmp_path / "models"))
    assert models_folder() == tmp_path / "models"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.sabundle").write_bytes(bundle_path.read_bytes())
    assert resolve_bundle("tiny") == tmp_path / "models" / "tiny.sabundle"
    assert len(load_bundle("tiny").classifiers) == 2


def _rewrite(src, dst, change):
    """Copy a bundle, letting ``change(name, data) -> data | None`` edit or drop members."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for name in a.namelist():
            data = change(name, a.read(name))
            if data is not None:
                b.writestr(name, data)
    return dst


def _expect(path, fragment, **kwargs):
    with pytest.raises(BundleError) as info:
        load_bundle(path, **kwargs)
    assert str(path) in str(info.value) and fragment in str(info.value), str(info.value)


def test_bad_bundles_are_refused_with_clear_messages(bundle_path, tmp_path):
    data = bundle_path.read_bytes()
    (tmp_path / "random.sabundle").write_bytes(np.random.default_rng(0).bytes(4000))
    _expect(tmp_path / "random.sabundle", "not a SinusAnomaly model bundle")
    (tmp_path / "truncated.sabundle").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "truncated.sabundle", "truncated")
    torch.save({"model": torch.zeros(3)}, tmp_path / "checkpoint.pt")  # a torch file is a zip too
    _expect(tmp_path / "checkpoint.pt", "no bundle.json")

    def format_version(version):
        def rewrite(name, blob):
            if name != "bundle.json":
                return blob
            meta = json.loads(blob)
            meta["format_version"] = version
            return json.dumps(meta)
        return rewrite

    _expect(_rewrite(bundle_path, tmp_path / "newer.sabundle", format_version(99)), "needs a newer SinusAnomaly")
    _expect(_rewrite(bundle_path, tmp_path / "older.sabundle", format_version(1)), "export it again")
    flipped = _rewrite(bundle_path, tmp_path / "tampered.sabundle",
                       lambda n, b: b if n != "classifier_fold1.npz" else b[:-10] + bytes(10))
    _expect(flipped, "checksum of classifier_fold1.npz does not match")
    _expect(_rewrite(bundle_path, tmp_path / "missing.sabundle", lambda n, b: None if n == "cae.npz" else b),
            "member cae.npz is missing")
    _expect(bundle_path, "different reference head", expected_reference_sha256="0" * 64)


def test_pickled_arrays_are_never_loaded(bundle_path, tmp_path):
    buf = io.BytesIO()
    np.savez(buf, weight=np.array([object()], dtype=object))
    evil = buf.getvalue()

    import hashlib

    manifest = {}

    def swap(name, blob):  # a deliberate edit: member checksum and bundle.json digest made consistent
        if name == "bundle.json":
            meta = json.loads(blob)
            meta["members"]["classifier_fold0.npz"] = hashlib.sha256(evil).hexdigest()
            manifest["bytes"] = json.dumps(meta).encode()
            return manifest["bytes"]
        if name == "bundle.json.sha256":
            return f"{hashlib.sha256(manifest['bytes']).hexdigest()}  bundle.json\n"
        return evil if name == "classifier_fold0.npz" else blob

    _expect(_rewrite(bundle_path, tmp_path / "pickle.sabundle", swap), "not a plain array archive")


def test_classify_with_a_bad_bundle_exits_with_an_error(tmp_path, head, capsys):
    _, path = head
    bad = tmp_path / "bad.sabundle"
    bad.write_text("not a bundle")
    assert main(["classify", str(path), "--model", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.sabundle" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_command_installs_into_the_models_folder(bundle_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SINUS_ANOMALY_MODELS", str(tmp_path / "models"))
    run = bundle_path.parent / "run"
    assert main(["export", str(run), "--out", str(tmp_path / "again"), "--install"]) == 0
    assert (tmp_path / "again.sabundle").is_file()
    assert (tmp_path / "models" / "again.sabundle").is_file()
    printed = capsys.readouterr().out
    assert "residual pretraining, 100 % labels, 2 fold(s)" in printed and "intended use: research" in printed
    assert "test AUROC" in printed and "data set: 20 patients" in printed
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--method", "none"]) == 2
    assert "no finished fine-tuning" in capsys.readouterr().err


def test_weights_are_stored_half_size_and_predict_as_the_float32_checkpoints(bundle_path, tiny_dataset):
    """Conv/linear weights are float16 in the file, everything else float32, and the loaded
    classifiers predict what the run's float32 checkpoints predict (to well under 1e-3)."""
    from SinusAnomalyLib.bundlefile import read_bundle_file
    from SinusAnomalyLib.models import SinusClassifier
    from SinusAnomalyTraining.engine import load_checkpoint

    stored = read_bundle_file(bundle_path).classifiers[0]
    assert all(a.dtype == (np.float16 if a.ndim >= 2 else a.dtype) for a in stored.values())
    assert {a.dtype for a in stored.values() if a.ndim < 2} <= {np.dtype(np.float32), np.dtype(np.int64)}
    assert any(a.dtype == np.float16 for a in stored.values())

    bundle = load_bundle(bundle_path)
    assert all(p.dtype == torch.float32 for p in bundle.classifiers[0].parameters())
    run = bundle_path.parent / "run"
    reference = SinusClassifier(encoder_widths=tuple(bundle.meta["models"]["encoder_widths"]))
    reference.load_state_dict(load_checkpoint(run / "fold0" / "finetune" / "residual" / "frac100" / "best.pt")["model"])
    dataset = load_dataset(tiny_dataset)
    crops = torch.from_numpy(np.asarray(dataset.crops[:16], dtype=np.float32))[:, None]
    crops = torch.nn.functional.adaptive_avg_pool3d(crops, bundle.model_crop_size)
    with torch.no_grad():
        expected = torch.softmax(reference.eval()(crops), 1)[:, 1]
        got = torch.softmax(bundle.classifiers[0](crops), 1)[:, 1]
    assert (got - expected).abs().max().item() < 1e-3
    storage = bundle.meta["weights_storage"]  # export measured it on the validation sinuses
    assert storage["half_weights"] is True and 0.0 <= storage["max_probability_change"] <= 0.002


def test_export_keeps_float32_weights_when_it_cannot_check_float16(bundle_path, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(bundle_path.parent / "run", run)
    info = json.loads((run / "dataset.json").read_text(encoding="utf-8"))
    info["path"] = str(tmp_path / "moved-away")
    (run / "dataset.json").write_text(json.dumps(info))
    path = export_run(run, tmp_path / "full.sabundle", "residual", 100)
    from SinusAnomalyLib.bundlefile import read_bundle_file

    stored = read_bundle_file(path)
    assert stored.meta["weights_storage"] == {**stored.meta["weights_storage"], "half_weights": False, "max_probability_change": None}
    assert all(a.dtype != np.float16 for arrays in stored.classifiers for a in arrays.values())
    assert path.stat().st_size > 1.8 * bundle_path.stat().st_size


def test_bundle_file_reads_without_torch(bundle_path):
    """The file layer (format, checks, arrays) needs numpy only: the Slicer GUI describes bundles
    before torch is installed, and classify reads the file while torch is imported."""
    import subprocess
    import sys

    code = ("import sys\nfrom SinusAnomalyLib.bundlefile import read_bundle_file, read_bundle_meta\n"
            f"meta = read_bundle_meta({str(bundle_path)!r})\nfile = read_bundle_file({str(bundle_path)!r})\n"
            "print(meta['n_folds'], len(file.classifiers), 'torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2", "False", "False"]


def test_classify_fails_fast_on_a_missing_image_or_bundle(bundle_path, tmp_path, capsys):
    assert main(["classify", str(tmp_path / "nothing.nii.gz"), "--model", str(bundle_path), "--out", str(tmp_path / "o")]) == 2
    assert "nothing.nii.gz: does not exist" in capsys.readouterr().err
    assert main(["classify", str(tmp_path / "nothing.nii.gz"), "--model", "no-such-model", "--out", str(tmp_path / "o")]) == 2
    assert "no-such-model" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("image\n")
    assert main(["classify", str(tmp_path / "empty.csv"), "--model", str(bundle_path), "--out", str(tmp_path / "o")]) == 2
    assert "empty.csv: lists no scans" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_refuses_a_run_with_nan_weights(bundle_path, tmp_path, capsys):
    """A diverged fold is not bundled: exit 2 naming the checkpoint and the weight, no file."""
    run = tmp_path / "run"
    shutil.copytree(bundle_path.parent / "run", run)
    best = run / "fold1" / "finetune" / "residual" / "frac100" / "best.pt"
    payload = torch.load(best, weights_only=True)
    key = next(k for k, v in payload["model"].items() if v.is_floating_point())
    payload["model"][key].view(-1)[0] = float("nan")
    torch.save(payload, best)
    assert main(["export", str(run), "--out", str(tmp_path / "nan.sabundle")]) == 2
    err = capsys.readouterr().err
    assert str(best) in err and f"'{key}' (1 values)" in err and "NaN or infinite" in err
    assert not (tmp_path / "nan.sabundle").exists()


def test_export_refuses_classifiers_fine_tuned_at_another_crop_size(bundle_path, tmp_path, capsys):
    """After a crop-size change the bundle would claim a size its classifiers never saw: refused, naming them."""
    run = tmp_path / "run"
    shutil.copytree(bundle_path.parent / "run", run)
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    (run / "config.json").write_text(json.dumps({**config, "crop_size": 64}))
    assert main(["export", str(run), "--out", str(tmp_path / "stale.sabundle")]) == 2
    err = capsys.readouterr().err
    assert "fine-tuned at crop size 32" in err and "says 64" in err and str(run / "fold0" / "finetune" / "residual" / "frac100") in err
    assert not (tmp_path / "stale.sabundle").exists()


def _manifest_edit(change):
    """A ``_rewrite`` change applying ``change(meta)`` to bundle.json and re-digesting it (an edit
    made consistent, as an older export would have written it)."""
    import hashlib

    manifest = {}

    def rewrite(name, blob):
        if name == "bundle.json":
            meta = json.loads(blob)
            change(meta)
            manifest["bytes"] = json.dumps(meta).encode()
            return manifest["bytes"]
        if name == "bundle.json.sha256":
            return f"{hashlib.sha256(manifest['bytes']).hexdigest()}  bundle.json\n"
        return blob
    return rewrite


def test_bundles_without_a_shortcut_type_load_as_projection_shortcuts(bundle_path, tmp_path):
    """Format-3 bundles exported before the shortcut type was recorded all had projections ("B")."""
    assert load_bundle(bundle_path).meta["models"]["shortcut_type"] == "B"
    old = _rewrite(bundle_path, tmp_path / "old.sabundle", _manifest_edit(lambda m: m["models"].pop("shortcut_type")))
    bundle = load_bundle(old)
    assert "shortcut_type" not in bundle.meta["models"]
    assert bundle.classifiers[0].encoder.shortcut_type == "B"
    _expect(_rewrite(bundle_path, tmp_path / "c.sabundle", _manifest_edit(lambda m: m["models"].update(shortcut_type="C"))),
            "'models.shortcut_type' must be \"A\" or \"B\"")
    # a bundle claiming the other shortcut does not fit its weights: refused, never loaded loosely
    _expect(_rewrite(bundle_path, tmp_path / "a.sabundle", _manifest_edit(lambda m: m["models"].update(shortcut_type="A"))),
            "does not fit the network described in its bundle.json")


EVERY_METHOD = ["none", "residual", "ae", "dae", "simclr", "byol", "simsiam", "spark", "medicalnet"]


def test_every_method_exports_and_classifies(tiny_dataset, head, tmp_path):
    """One run of each kind, MedicalNet's (shortcut A) included: each exports, its bundle rebuilds
    the run's classifier exactly (float16 storage aside) and classifies a head."""
    from SinusAnomalyLib.extraction import extract_sinuses
    from SinusAnomalyLib.imageio import read_image
    from SinusAnomalyLib.inference import classify_extraction
    from SinusAnomalyLib.models import ResNet18Encoder, SinusClassifier
    from SinusAnomalyTraining.engine import load_checkpoint

    torch.manual_seed(0)
    widths = TINY_CONFIG["encoder_widths"]
    medicalnet = ResNet18Encoder(shortcut_type="A", widths=widths)  # MedicalNet's file layout, tiny
    weights = {f"module.{k}": v for k, v in medicalnet.state_dict().items()}
    weights["module.conv_seg.0.weight"] = torch.randn(2, widths[-1], 1, 1, 1)
    torch.save({"state_dict": weights}, tmp_path / "resnet_18.pth")
    config = copy.deepcopy(TINY_CONFIG)
    config.update(methods=EVERY_METHOD, fractions=[100], folds=[0], pretext={"spark": {"patch_size": 4}},
                  medicalnet_weights=str(tmp_path / "resnet_18.pth"))
    config["cae"]["epochs"] = config["pretrain"]["epochs"] = config["finetune"]["epochs"] = 1
    run = tmp_path / "run"
    pipeline.run_pipeline(config_from_dict(config), tiny_dataset, run, torch.device("cpu"), progress=False)

    _, path = head
    image = read_image(path)
    extraction = extract_sinuses(image, load_reference(), source=str(path))
    crops = torch.from_numpy(np.asarray(load_dataset(tiny_dataset).crops[:4], dtype=np.float32))[:, None]
    crops = torch.nn.functional.adaptive_avg_pool3d(crops, 32)
    for method in EVERY_METHOD:
        bundle = load_bundle(export_run(run, tmp_path / f"{method}.sabundle", method, 100))
        shortcut = "A" if method == "medicalnet" else "B"
        assert bundle.meta["method"] == method and bundle.meta["models"]["shortcut_type"] == shortcut
        reference = SinusClassifier(encoder_widths=tuple(widths), shortcut_type=shortcut).eval()
        reference.load_state_dict(load_checkpoint(run / "fold0" / "finetune" / method / "frac100" / "best.pt")["model"])
        with torch.no_grad():
            expected = torch.softmax(reference(crops), 1)[:, 1]
            got = torch.softmax(bundle.classifiers[0](crops), 1)[:, 1]
        assert (got - expected).abs().max().item() < 2e-3, method
        result = classify_extraction(image, extraction, bundle)
        assessed = [s for s in result.sides.values() if s.assessable]
        assert assessed and all(0.0 <= s.probability <= 1.0 for s in assessed), method


def test_demo_scores_its_bundle_on_heads_of_the_anatomies_it_never_saw(bundle_path, tmp_path):
    """The demo report's transfer section: heads made from the other real anatomies, classified
    with the bundle, scored at the bundle's threshold; a re-run reuses the heads."""
    bundle = load_bundle(bundle_path)
    scores = classify_other_anatomies(tmp_path, bundle, "cpu", n_heads=3, seed=5)
    truth = json.loads((tmp_path / "cohort" / "truth.json").read_text(encoding="utf-8"))
    assert sorted(truth) == ["synth-0000", "synth-0001", "synth-0002"]
    assert {case["pose"]["anatomy"] for case in truth.values()} <= set(OTHER_ANATOMIES)
    assessed = 2 * (3 - scores["heads_refused"])
    assert 0 < scores["n"] <= assessed  # a side partly out of view may not be assessable
    assert scores["threshold"] == pytest.approx(bundle.threshold)
    assert scores["tn"] + scores["fp"] == scores["n_negative"] and scores["tp"] + scores["fn"] == scores["n_positive"]
    # per lesion kind: the anomalous sinuses split by their kind, each kind's hits at the same threshold
    kinds = scores["by_type"]
    assert set(kinds) <= {case[side]["anomaly"] for case in truth.values() for side in ("left", "right")} - {None}
    assert sum(m["n"] for m in kinds.values()) == scores["n_positive"]
    assert sum(round(m["sensitivity"] * m["n"]) for m in kinds.values()) == scores["tp"]
    fired, checked = scores["ood"]  # the out-of-distribution check ran on every assessed sinus
    assert checked == scores["n"] and 0 <= fired <= checked
    again = classify_other_anatomies(tmp_path, bundle, "cpu", n_heads=3, seed=5)
    assert again["tn"] == scores["tn"] and again["tp"] == scores["tp"]


def test_demo_transfer_section_survives_heads_that_cannot_be_assessed(bundle_path, tmp_path, monkeypatch, capsys):
    """Every head refused: no metrics to compute, and no crash at the end of the demo's long run;
    a negative --transfer-heads is refused before any work."""
    def refuse(path, *args, **kwargs):
        raise ImageError(path, "neither maxillary sinus is in view enough to assess")

    monkeypatch.setattr(demo_command, "classify", refuse)
    assert classify_other_anatomies(tmp_path, load_bundle(bundle_path), "cpu", n_heads=2, seed=5) == {"n": 0, "heads_refused": 2}
    assert main(["demo", "--out", str(tmp_path / "demo"), "--transfer-heads", "-1"]) == 2
    assert "--transfer-heads must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
