"""The leave-one-anatomy-out check's scores of polyps and retention cysts on a held-out pool and its
focal test pool together (``benchmarks/loao.py``, issues 24 and 30)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import loao  # noqa: E402


def _row(kind: str, probability: float, size: str = "") -> dict:
    return {"anatomy": "colin27", "method": "none", "seed": "0", "patient": "p", "side": "left", "contrast": "t1",
            "anomaly_type": kind, "lesion_size_mm": size, "label": str(int(kind != "normal")),
            "probability": str(probability), "threshold": "0.5"}


def test_focal_scores_rank_each_kind_against_the_normals_of_both_sets():
    pool = [_row("normal", 0.1), _row("normal", 0.6), _row("polyp", 0.7, "5.0"), _row("mucosal_thickening", 0.9, "3.0")]
    focal = [_row("normal", 0.2), _row("normal", 0.3), _row("polyp", 0.4, "10.0"), _row("retention_cyst", 0.8, "20.0"),
             _row("retention_cyst", 0.05, "6.0")]
    scores = loao.focal_scores(pool + focal)
    # polyps 0.7 and 0.4 against normals 0.1, 0.6, 0.2, 0.3: 4 + 3 of 8 pairs ranked right
    assert scores["focal:type:polyp:auroc"] == pytest.approx(7 / 8)
    # cysts 0.8 and 0.05: 4 + 0 of 8
    assert scores["focal:type:retention_cyst:auroc"] == pytest.approx(4 / 8)
    assert scores["focal:type:polyp:sensitivity"] == pytest.approx(0.5)  # 0.7 at or above 0.5, 0.4 below
    assert scores["focal:type:retention_cyst:sensitivity"] == pytest.approx(0.5)
    assert scores["focal:specificity"] == pytest.approx(3 / 4)  # 0.6 is called anomalous
    assert (scores["focal:n_normal"], scores["focal:type:polyp:n"], scores["focal:type:retention_cyst:n"]) == (4, 2, 2)
    assert scores["focal:size:retention_cyst:14-26:auroc"] == pytest.approx(1.0)
    assert scores["focal:size:retention_cyst:4-8:auroc"] == pytest.approx(0.0)
    assert not any("mucosal_thickening" in key for key in scores)  # only the focal kinds
    assert scores["focal:contrast:t1:polyp:auroc"] == pytest.approx(7 / 8)  # every fixture sinus is T1-like


def test_summarise_adds_focal_scores_only_where_a_focal_pool_was_classified(tmp_path):
    columns = loao.PREDICTION_COLUMNS
    pool_rows = [_row("normal", 0.1), _row("normal", 0.3), _row("polyp", 0.6, "5.0"), _row("retention_cyst", 0.2, "9.0")]
    focal_rows = [_row("normal", 0.4), _row("retention_cyst", 0.9, "12.0")]

    def write(name, rows):
        path = tmp_path / name
        path.write_text(",".join(columns) + "\n" + "".join(",".join(r[c] for c in columns) + "\n" for r in rows))
        return path

    without = loao.summarise([write("pool.csv", pool_rows)])
    assert not any(key.startswith("focal:") for key in without["none"]["colin27"])
    table = loao.summarise([write("pool.csv", pool_rows)], [write("focal.csv", focal_rows)])
    m = table["none"]["colin27"]
    assert m["type:retention_cyst:auroc"] == [0.5]  # the pool alone: 0.2 between its normals 0.1 and 0.3
    # both sets: cysts 0.2 and 0.9 against normals 0.1, 0.3, 0.4: 1 + 3 of 6 pairs
    assert m["focal:type:retention_cyst:auroc"] == [pytest.approx(4 / 6)]
    assert "Polyps and retention cysts on the held-out pool and its focal test pool" in loao.markdown(table, [0])
    assert np.isfinite(table["none"]["all"]["focal:specificity"][0])


def test_compare_loao_scores_only_the_sinuses_both_variants_classified(tmp_path):
    import compare_loao

    columns = loao.PREDICTION_COLUMNS

    def row(patient, kind, probability):
        return _row(kind, probability, "8.0" if kind != "normal" else "") | {"patient": patient}

    def write(work, tag, pool, focal):
        split = work / "without-colin27"
        split.mkdir(parents=True, exist_ok=True)
        for name, rows in ((f"predictions_seed0{tag}.csv", pool), (f"focal_predictions_seed0{tag}.csv", focal)):
            (split / name).write_text(",".join(columns) + "\n" + "".join(",".join(r[c] for c in columns) + "\n" for r in rows))

    small = [row("a", "normal", 0.1), row("b", "normal", 0.6), row("c", "polyp", 0.7)]
    focal = [row("f", "normal", 0.2), row("g", "retention_cyst", 0.9)]
    write(tmp_path / "small", "", small, focal)
    # the larger pool adds a head that the first variant never classified, scored so as to change every metric
    big = [row("a", "normal", 0.2), row("b", "normal", 0.3), row("c", "polyp", 0.8), row("z", "normal", 0.99)]
    write(tmp_path / "big", "_x", big, [row("f", "normal", 0.1), row("g", "retention_cyst", 0.05)])
    pairs = compare_loao.compare((tmp_path / "small", ""), (tmp_path / "big", "_x"), [0, 1], "none", anatomies=("colin27",))
    assert list(pairs) == [("colin27", 0)]  # seed 1 has no predictions: left out, not an error
    a, b, n = pairs["colin27", 0]
    assert n == 5  # a, b, c, f, g: z is not in the first variant's pool
    assert (a["specificity"], b["specificity"]) == (pytest.approx(0.5), pytest.approx(1.0))  # 0.6 called anomalous; z left out
    assert b["focal:type:retention_cyst:auroc"] == pytest.approx(0.0)  # 0.05 below the normals 0.2, 0.3, 0.1
    assert a["focal:type:polyp:auroc"] == pytest.approx(1.0)
    text = compare_loao.markdown(pairs, "small", "big_x")
    assert "| specificity | 0.50 | 1.00 |" in text


def test_seed_ensemble_averages_the_seeds_on_the_sinuses_every_seed_classified(tmp_path):
    import seed_ensemble

    columns = loao.PREDICTION_COLUMNS
    split = tmp_path / "without-colin27"
    split.mkdir()

    def write(seed, pool, focal, threshold):
        for name, rows in ((f"predictions_seed{seed}.csv", pool), (f"focal_predictions_seed{seed}.csv", focal)):
            rows = [_row(kind, probability, "8.0" if kind != "normal" else "") | {"patient": patient, "seed": str(seed),
                                                                                 "threshold": str(threshold)}
                    for patient, kind, probability in rows]
            (split / name).write_text(",".join(columns) + "\n" + "".join(",".join(r[c] for c in columns) + "\n" for r in rows))

    # seed 0 ranks the cyst below one normal, seed 1 above both: their mean ranks it above both
    write(0, [("a", "normal", 0.1), ("b", "normal", 0.5), ("c", "polyp", 0.6)], [("g", "retention_cyst", 0.3)], 0.4)
    write(1, [("a", "normal", 0.3), ("b", "normal", 0.1), ("c", "polyp", 0.2), ("z", "normal", 0.9)],
          [("g", "retention_cyst", 0.9)], 0.6)
    found = seed_ensemble.ensemble_scores(tmp_path, "", "none", [0, 1], anatomies=("colin27", "reference"))
    assert list(found) == ["colin27"]  # the reference has no predictions: left out, not an error
    singles, ensemble = found["colin27"]
    assert [s["focal:type:retention_cyst:auroc"] for s in singles] == [pytest.approx(0.5), pytest.approx(1.0)]
    # mean probabilities: a 0.2, b 0.3, c 0.4, g 0.6 (z, classified by seed 1 only, is left out)
    assert ensemble["focal:type:retention_cyst:auroc"] == pytest.approx(1.0)
    assert ensemble["type:polyp:auroc"] == pytest.approx(1.0)
    assert ensemble["n"] == 3
    assert ensemble["specificity"] == pytest.approx(1.0)  # both normals below the mean threshold 0.5
    assert ensemble["sensitivity"] == pytest.approx(0.0)  # the polyp's 0.4 too
    text = seed_ensemble.markdown(found, "x", 2)
    assert "| specificity | 0.75 ± 0.35 | 1.00 | 0.25 | 1 of 1 |" in text


def _pool_tables(root: Path, heads: dict[str, list[tuple[str, str]]], unlabelled: list[str] = ()) -> dict[str, Path]:
    """Combined tables like ``combine_pools`` writes: {anatomy: [(patient suffix, anomaly type of both sides)]}."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for anatomy, patients in heads.items():
        for suffix, kind in patients:
            name = f"{anatomy}-{suffix}"
            (images / f"{name}.nii.gz").write_bytes(name.encode())
            rows += [f"{name},{side},{int(kind != 'normal')},{kind},{name}.nii.gz" for side in ("left", "right")]
    for name in unlabelled:
        (images / f"{name}.nii.gz").write_bytes(name.encode())
    (root / "labels.csv").write_text("patient,side,label,anomaly_type,image\n" + "\n".join(rows) + "\n")
    (root / "unlabelled.csv").write_text("patient,image\n" + "".join(f"{n},{n}.nii.gz\n" for n in unlabelled))
    return {"images": images, "labels": root / "labels.csv", "unlabelled": root / "unlabelled.csv"}


def test_training_tables_take_the_first_heads_of_each_pool_and_rename_the_focal_ones(tmp_path):
    pools = _pool_tables(tmp_path / "all", {"colin27": [("synth-0000", "normal"), ("synth-0001", "polyp"), ("synth-0002", "normal")],
                                            "reference": [("synth-0000", "mucosal_thickening"), ("synth-0001", "normal")]},
                         unlabelled=["colin27-synth-u0000"])
    focal = _pool_tables(tmp_path / "focal-train", {"colin27": [("synth-0000", "retention_cyst"), ("synth-0001", "normal")],
                                                    "reference": [("synth-0000", "polyp"), ("synth-0001", "retention_cyst")]})
    train = loao.training_tables(tmp_path, pools, focal, pool_heads=2, focal_heads=1)
    labels = loao.read_table(train["labels"])
    assert sorted({r["patient"] for r in labels}) == ["colin27-focal-synth-0000", "colin27-synth-0000", "colin27-synth-0001",
                                                      "reference-focal-synth-0000", "reference-synth-0000", "reference-synth-0001"]
    assert {r["anomaly_type"] for r in labels if "-focal-" in r["patient"]} == {"retention_cyst", "polyp"}
    # each renamed head's image is its focal pool's file, and its scans are found under its old name
    assert (train["images"] / "colin27-focal-synth-0000.nii.gz").read_bytes() == b"colin27-synth-0000"
    assert train["scans"] == {"colin27-focal-synth-0000": "colin27-synth-0000", "reference-focal-synth-0000": "reference-synth-0000"}
    assert [r["patient"] for r in loao.read_table(train["unlabelled"])] == ["colin27-synth-u0000"]
    assert (train["images"] / "colin27-synth-u0000.nii.gz").is_file()
    assert {anatomy for anatomy in map(loao.anatomy_of, (r["patient"] for r in labels))} == {"colin27", "reference"}


def test_renamed_heads_find_their_cached_scans(tmp_path):
    source = tmp_path / "src" / "scans" / "colin27-synth-0000"
    source.mkdir(parents=True)
    (source / "crops.npz").write_bytes(b"crops")
    assert loao.link_cached_scans(tmp_path / "src", tmp_path / "dst", {"colin27-focal-synth-0000": "colin27-synth-0000"}) == 1
    assert (tmp_path / "dst" / "scans" / "colin27-focal-synth-0000" / "crops.npz").read_bytes() == b"crops"


def test_other_folds_need_a_tag_of_their_own(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        loao.main(["--work", str(tmp_path / "work"), "--folds", "5"])
    assert stopped.value.code == 2 and "--folds 5 needs a --tag" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # refused before any pool was made
