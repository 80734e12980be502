"""Extraction on real heads the project did not make, and the refusal of scans that are no usable head.

The real heads (``SinusAnomaly/Resources/Anatomies``: Colin27 and a single-subject T1) both end inside the
maxillary sinuses; errors are like for like (``heads.visible_centre_error``). The goals of
``benchmarks/bench_extraction.py`` are median <= 4 mm and max <= 8 mm over many poses; here fewer
poses, the same limits.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from heads import RealHead, negative_scans, posed, real_heads, visible_centre_error
from SinusAnomalyLib.errors import SinusAnomalyError
from SinusAnomalyLib.extraction import MIN_COVERAGE, extract_sinuses, save_extraction
from SinusAnomalyLib.imageio import write_image
from SinusAnomalyLib.reference import SIDES, load_reference


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module")
def heads():
    return {head.name: head for head in real_heads()}


@pytest.fixture(scope="module")
def extracted(heads, reference):
    """Each real head as it comes, and Colin27 posed on a new grid as FLAIR- and T2-like scans."""
    cases = list(heads.values()) + [posed(heads["colin27"], 1, "flair"), posed(heads["single_subject_t1"], 2, "t2")]
    return [(case, extract_sinuses(case.image, reference, source=case.name)) for case in cases]


def test_real_heads_are_accepted_with_centres_within_the_goals(extracted, reference):
    errors = {(case.name, side): visible_centre_error(case, result, reference, side)
              for case, result in extracted for side in SIDES}
    assert max(errors.values()) <= 8.0, errors
    assert np.median(list(errors.values())) <= 4.0, errors


def test_real_heads_report_partial_coverage_and_stay_assessable(extracted):
    """Both heads end inside the sinuses: posed copies (zero padding beyond the cut) show it."""
    for case, result in extracted:
        for side in SIDES:
            assert MIN_COVERAGE <= result.coverage[side] <= 1.0, (case.name, result.coverage)
            assert result.assessable(side)
    posed_cases = [result for case, result in extracted if "pose" in case.name]
    assert all(min(result.coverage.values()) < 0.97 for result in posed_cases), [r.coverage for r in posed_cases]


def _cut_below(head: RealHead, z_ras: float) -> sitk.Image:
    """``head`` with a field of view that ends at height ``z_ras`` (RAS mm)."""
    first = int(np.ceil(head.image.TransformPhysicalPointToContinuousIndex((0.0, 0.0, float(z_ras)))[2]))
    return head.image[:, :, first:]


def test_partial_field_of_view_is_cropped_padded_and_reported(heads, reference, tmp_path):
    """A scan that ends 6 mm below the visible sinus centres: accepted, coverage well below 1 (measured
    0.57-0.68), crops padded with the background where the scan has nothing, coverage in extraction.json."""
    colin = heads["colin27"]
    z_centre = np.mean([c[2] for c in colin.visible_centres_ras.values()])
    result = extract_sinuses(_cut_below(colin, z_centre - 6.0), reference, source="cut")
    assert all(MIN_COVERAGE <= result.coverage[side] < 0.85 for side in SIDES), result.coverage
    left = result.arrays()["left"]
    assert (left[:, :, :8] == left.min()).mean() > 0.9  # below the cut: one background value
    save_extraction(result, tmp_path)
    summary = json.loads((tmp_path / "extraction.json").read_text(encoding="utf-8"))
    for side in SIDES:
        assert summary[side]["coverage"] == pytest.approx(result.coverage[side], abs=1e-4)
        assert summary[side]["assessable"] is True
        assert "center_ras_mm" in summary[side]
    with pytest.raises(SinusAnomalyError, match="neither maxillary sinus is in view"):  # measured 0.20 / 0.17
        extract_sinuses(_cut_below(colin, z_centre + 8.0), reference, source="cut higher")


@pytest.mark.parametrize("kind", ["skull-stripped brain", "defaced", "ends above the sinuses", "noise", "phantom", "torso"])
def test_scans_without_maxillary_sinuses_are_refused(kind, heads, reference):
    image = negative_scans(heads["colin27"])[kind]
    with pytest.raises(SinusAnomalyError) as info:
        extract_sinuses(image, reference, source=kind)
    assert info.value.args[0].startswith(kind + ": ")


def test_refusals_exit_2_with_a_reason_and_no_traceback_nor_output(heads, tmp_path):
    scans = negative_scans(heads["colin27"])
    # a torso may fail the fit or the coverage first; both are refusals with the reason stated
    for kind, reasons in (("defaced", ("neither maxillary sinus is in view",)),
                          ("torso", ("neither maxillary sinus is in view", "registration to the reference head failed"))):
        path = tmp_path / f"{kind.replace(' ', '_')}.nii.gz"
        write_image(scans[kind], path)
        out = tmp_path / f"out_{kind}"
        proc = subprocess.run([sys.executable, "-m", "SinusAnomalyTraining", "extract", str(path), "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        assert str(path) in proc.stderr and any(reason in proc.stderr for reason in reasons), proc.stderr
        assert not (out / "extraction.json").exists()


def test_blank_fill_is_not_matched_as_anatomy(heads, reference):
    """Zero padding below a scan that ends at the sinus floor does not squash the head onto it."""
    variant = posed(heads["colin27"], 3, "t1")
    result = extract_sinuses(variant.image, reference, source=variant.name)
    scales = np.linalg.svd(result.registration.matrix_lps[:3, :3], compute_uv=False)
    assert scales.min() > 0.95, scales  # Colin27 is in MNI space, larger than the reference: ~1.0-1.2
    array = sitk.GetArrayViewFromImage(variant.image)
    assert (array == 0).mean() > 0.05  # the variant does carry zero padding
