"""Sinus extraction on synthetic heads with known truth: accuracy, geometry of the crops, failures."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from SinusAnomalyLib.errors import ImageError, RegistrationError
from SinusAnomalyLib.extraction import CROP_SIZE, extract_sinuses, save_extraction
from SinusAnomalyLib.imageio import write_image
from SinusAnomalyLib.reference import SIDES, load_reference
from SinusAnomalyLib.synth import ANOMALY_TYPES, SynthParams, make_case
from SinusAnomalyTraining.cli import main

MAX_CENTRE_ERROR_MM = 10.0  # the requirement


def _error(result, case, side):
    return float(np.linalg.norm(result.centers_ras[side] - case.centers_ras[side]))


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.fixture(scope="module")
def posed_cases(reference):
    """Heads under random pose (<= 15 deg, <= 20 mm), spacing 0.9-2 mm (anisotropic), RAS/LPS/oblique
    grids, noise, bias field, moderate shape deformation; three of them strongly deformed."""
    cases = []
    for i in range(4):
        cases.append(make_case(f"posed-{i}", np.random.default_rng([7, i]), SynthParams(), reference=reference))
    strong = SynthParams(deformation_mm=10.0)
    for i in range(3):
        cases.append(make_case(f"deformed-{i}", np.random.default_rng([8, i]), strong, reference=reference))
    return [(case, extract_sinuses(case.image, reference, source=case.patient)) for case in cases]


def test_centres_within_10_mm_of_truth_on_posed_and_deformed_heads(posed_cases):
    errors = {(case.patient, side): _error(result, case, side) for case, result in posed_cases for side in SIDES}
    worst = max(errors, key=errors.get)
    assert errors[worst] < MAX_CENTRE_ERROR_MM, f"{worst}: {errors[worst]:.1f} mm (all: {errors})"
    assert np.median(list(errors.values())) < 4.0, errors


def test_crops_are_64_cubes_in_unit_range(posed_cases):
    for _, result in posed_cases:
        for side, array in result.arrays().items():
            assert array.shape == (CROP_SIZE,) * 3
            assert array.dtype == np.float32
            assert 0.0 <= array.min() and array.max() <= 1.0
            assert array.std() > 0.1, f"{side} crop is nearly flat"
            assert np.allclose(result.crops[side].GetSpacing(), 1.0)


def test_left_and_mirrored_right_crops_look_alike(posed_cases):
    """Mirroring maps the right sinus onto a left one: the two crops of a head correlate."""
    for case, result in posed_cases:
        arrays = result.arrays()
        left, right = arrays["left"].ravel(), arrays["right"].ravel()
        mirrored_ok = np.corrcoef(left, right)[0, 1]
        unmirrored = np.corrcoef(left, arrays["right"][::-1].ravel())[0, 1]
        assert mirrored_ok > 0.5, case.patient
        assert mirrored_ok > unmirrored + 0.1, case.patient


def test_saved_crops_are_placed_in_the_input_world_space(posed_cases, tmp_path):
    case, result = posed_cases[0]
    head_path = tmp_path / "head.nii.gz"
    write_image(case.image, head_path)
    save_extraction(result, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "extraction.json").read_text(encoding="utf-8"))
    head = nib.load(str(head_path))
    head_data = np.asarray(head.dataobj, dtype=np.float32)
    for side in SIDES:
        crop = nib.load(str(tmp_path / "out" / f"{side}_crop.nii.gz"))
        assert crop.shape == (CROP_SIZE,) * 3
        # the crop's centre voxel lies at the reported centre
        centre = crop.affine @ np.r_[(CROP_SIZE - 1) / 2.0, (CROP_SIZE - 1) / 2.0, (CROP_SIZE - 1) / 2.0, 1.0]
        assert np.allclose(centre[:3], summary[side]["center_ras_mm"], atol=1e-2)
        assert np.allclose(np.linalg.svd(crop.affine[:3, :3], compute_uv=False), 1.0, atol=1e-4)  # 1 mm voxels
        assert (np.linalg.det(crop.affine[:3, :3]) < 0) == (side == "right")  # mirrored crop: left-handed axes
        assert np.allclose(crop.affine, summary[side]["affine_ras"], atol=1e-4)
        # each crop voxel holds the head's intensity at that world point (nearest head voxel)
        ijk = np.stack(np.meshgrid(*[np.arange(8, 56, 6)] * 3, indexing="ij"), -1).reshape(-1, 3)
        world = ijk @ crop.affine[:3, :3].T + crop.affine[:3, 3]
        head_ijk = np.round(world @ np.linalg.inv(head.affine)[:3, :3].T + np.linalg.inv(head.affine)[:3, 3]).astype(int)
        inside = np.all((head_ijk >= 0) & (head_ijk < head.shape), axis=1)
        head_values = head_data[tuple(head_ijk[inside].T)]
        crop_values = np.asarray(crop.dataobj)[tuple(ijk[inside].T)]
        assert np.corrcoef(head_values, crop_values)[0, 1] > 0.9
    reg = summary["registration"]
    assert 0.0 < reg["quality"] <= 1.0
    assert np.asarray(reg["reference_to_input_ras"]).shape == (4, 4)


def test_crops_do_not_depend_on_the_grid_orientation(reference, posed_cases):
    """The same head stored on an LPS grid and on an oblique grid gives the same crops."""
    case, result = posed_cases[1]
    image = case.image
    angle = np.radians(25.0)
    oblique = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    flip = np.diag([-1.0, 1.0, -1.0]) @ oblique  # a different (proper) grid orientation
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint((np.asarray(image.GetSize()) - 1) / 2.0))
    spacing = np.full(3, 1.3)
    size = np.ceil(extent.max() * 1.2 / spacing).astype(int)
    origin = centre - flip @ ((size - 1) * spacing / 2.0)
    regridded = sitk.Resample(image, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                              spacing.tolist(), flip.ravel().tolist(), 0.0)
    other = extract_sinuses(regridded, reference, source="regridded")
    for side in SIDES:
        assert np.linalg.norm(other.centers_ras[side] - result.centers_ras[side]) < 2.0
        a, b = result.arrays()[side].ravel(), other.arrays()[side].ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.9


def test_non_head_image_is_rejected_not_cropped(reference, tmp_path):
    rng = np.random.default_rng(3)
    blob = sitk.GetImageFromArray(rng.random((90, 110, 100)).astype(np.float32))
    blob = sitk.SmoothingRecursiveGaussian(blob, 6.0)
    blob.SetSpacing((2.0, 2.0, 2.0))
    path = tmp_path / "blob.nii.gz"
    write_image(blob, path)
    with pytest.raises((RegistrationError, ImageError)) as info:  # no plausible fit, or no sinus in view
        extract_sinuses(path, reference)
    assert "blob.nii.gz" in str(info.value)
    assert main(["extract", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_scan_without_the_face_is_rejected(reference, posed_cases):
    """A brain-only field of view (everything below the eyes cut away) cannot give sinus crops."""
    case, _ = posed_cases[0]
    lps_centre = np.diag([-1.0, -1.0, 1.0]) @ case.centers_ras["left"]
    image = case.image
    index_z = np.asarray([image.TransformPhysicalPointToContinuousIndex((lps_centre + np.array([0, 0, dz])).tolist())
                          for dz in (0.0, 45.0)])
    # keep the half of the grid far from the sinuses along the axis closest to superior
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[2])))
    cut = int(round(index_z[1][axis]))
    size = list(image.GetSize())
    if direction[2, axis] > 0:
        top = image[tuple(slice(cut, None) if a == axis else slice(None) for a in range(3))]
    else:
        top = image[tuple(slice(0, cut) if a == axis else slice(None) for a in range(3))]
    assert top.GetSize()[axis] < size[axis]
    with pytest.raises(RegistrationError):
        extract_sinuses(top, reference, source="brain-only")


def test_registration_is_exactly_repeatable():
    """The same scan registered twice gives the same matrix to the last bit (ITK's threaded metric
    would not), so crops, datasets and models made from them are reproducible."""
    from SinusAnomalyLib.registration import register_to_reference

    reference = load_reference()
    image = make_case("repeat", np.random.default_rng(5), SynthParams(), reference=reference).image
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)  # the threaded case, even on one core
    try:
        matrices = [register_to_reference(image, reference).matrix_lps for _ in range(3)]
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    assert all(np.array_equal(m, matrices[0]) for m in matrices)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == previous


def test_a_t2_like_head_is_found_from_a_start_the_coarse_metric_ranks_lower(reference):
    """synth-0055 of the transfer check's training cohort (benchmarks/transfer_check.sh, seed 11):
    Colin27 rendered T2-like. Against the T1 reference the coarse rigid metric ranked starts 20-35 mm
    off first, and the scan was refused (quality 0.10). The next-best starts are now carried through
    the whole pipeline in turn, and one lands on the sinuses."""
    variety = SynthParams(anatomies=("reference", "colin27"), contrasts=("t1", "t2", "flair"), sinus_scale_range=(0.7, 1.3),
                          sinus_shape_mm=3.0, wall_thickness_mm=(0.0, 2.5), septum_rate=0.2, floor_first_thickening=True,
                          anomaly_types=ANOMALY_TYPES)
    case = make_case("synth-0055", np.random.default_rng([11, 55]), variety, reference=reference)
    assert (case.pose["anatomy"], case.pose["contrast"]) == ("colin27", "t2")  # still the case this test is about
    result = extract_sinuses(case.image, reference, source=case.patient)
    assert any(stage["stage"] == "fallback" for stage in result.registration.stages)
    for side in SIDES:
        assert _error(result, case, side) < MAX_CENTRE_ERROR_MM, (side, _error(result, case, side))


def test_a_runaway_whole_head_affine_falls_back_to_the_rigid_fit(reference, monkeypatch):
    """synth-0097 of an earlier default cohort (seed 0): a good rigid fit, then the whole-head affine
    ran off to scales 2.97/1.26/0.68 and the scan was refused. The midface fit now starts from the
    rigid fit instead and lands on the sinuses. (The cohort changed since; the runaway is forced
    here: the first fit checked for scaling, the whole-head affine's, is called a runaway.)"""
    from SinusAnomalyLib import registration

    real_check, calls = registration.scaling_problem, []

    def first_is_a_runaway(matrix_lps):
        calls.append(1)
        return "implausible scaling [2.97, 1.26, 0.68]" if len(calls) == 1 else real_check(matrix_lps)

    monkeypatch.setattr(registration, "scaling_problem", first_is_a_runaway)
    case = make_case("synth-0097", np.random.default_rng([0, 97]), SynthParams(), reference=reference)
    result = extract_sinuses(case.image, reference, source=case.patient)
    whole = next(stage for stage in result.registration.stages if stage["stage"] == "affine whole head")
    assert "implausible scaling" in whole.get("rejected", ""), whole
    for side in SIDES:
        assert _error(result, case, side) < 3.0, (side, _error(result, case, side))
