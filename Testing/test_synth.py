"""The synthetic cohort: determinism, ground truth consistency, variety, resume, CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from SinusAnomalyLib.errors import SinusAnomalyError
from SinusAnomalyLib.imageio import read_image
from SinusAnomalyLib.reference import ANATOMIES, SIDES, load_anatomy, load_reference
from SinusAnomalyLib import synth
from SinusAnomalyLib.synth import ANOMALY_TYPES, LESION_LABELS, SynthParams, generate_cohort, make_case
from SinusAnomalyLib.synth.anatomy import _anatomy, _face_weight, _tissue_layers, _white_matter
from SinusAnomalyLib.synth.contrast import _render
from SinusAnomalyLib.synth.lesions import _draw_lesion, _lesioned_anatomy
from SinusAnomalyLib.synth.pose import SINUS_SCALE_LIMITS, _displacement
from SinusAnomalyTraining.cli import main


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, n_cases=4, seed=3, progress=False, previews=2)
    return out


def _world_ras(image: sitk.Image, index) -> np.ndarray:
    p = np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))
    return np.diag([-1.0, -1.0, 1.0]) @ p


def test_same_seed_same_head_other_seed_other_head():
    reference = load_reference()
    a = make_case("a", np.random.default_rng([5, 0]), reference=reference)
    b = make_case("a", np.random.default_rng([5, 0]), reference=reference)
    c = make_case("a", np.random.default_rng([5, 1]), reference=reference)
    assert np.array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(b.image))
    assert all(np.array_equal(a.centers_ras[s], b.centers_ras[s]) for s in SIDES)
    assert a.anomalies == b.anomalies
    assert a.image.GetSize() != c.image.GetSize() or not np.array_equal(
        sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(c.image))


@pytest.mark.parametrize("kind", ANOMALY_TYPES)
def test_each_lesion_type_is_bright_tissue_inside_the_sinus(kind):
    reference = load_reference()
    case = make_case("x", np.random.default_rng(11), SynthParams(max_rotation_deg=0, max_translation_mm=0),
                     anomalies={"left": kind, "right": None}, reference=reference)
    labels = sitk.GetArrayViewFromImage(case.lesion_labels)
    image = sitk.GetArrayViewFromImage(case.image)
    left = labels == LESION_LABELS["left"]
    assert left.any(), kind
    # the recorded lesion volume (drawn at 1 mm) is what the posed label map holds
    voxel_ml = float(np.prod(case.lesion_labels.GetSpacing())) / 1000.0
    assert left.sum() * voxel_ml == pytest.approx(case.lesion_sizes["left"]["volume_ml"], rel=0.35, abs=0.02), kind
    assert not (labels == LESION_LABELS["right"]).any()
    # lesion voxels lie near the left centre, which is on the patient's left (negative x)
    idx = np.argwhere(left.transpose(2, 1, 0))
    points = np.array([_world_ras(case.lesion_labels, i) for i in idx[:: max(1, len(idx) // 200)]])
    assert np.linalg.norm(points - case.centers_ras["left"], axis=1).max() < 30.0
    assert case.centers_ras["left"][0] < case.centers_ras["right"][0]
    # brighter than the air of the normal right sinus around its centre
    right_centre = np.round(case.image.TransformPhysicalPointToContinuousIndex(
        (np.diag([-1.0, -1.0, 1.0]) @ case.centers_ras["right"]).tolist())).astype(int)
    air = image[right_centre[2] - 1:right_centre[2] + 2, right_centre[1] - 1:right_centre[1] + 2, right_centre[0] - 1:right_centre[0] + 2]
    assert np.median(image[left]) > 3 * np.median(air), kind


def test_lesion_sizes_span_the_literature_ranges():
    """Focal lesions and thickening are drawn across their whole size range, small ones as often as large."""
    head, cavity, _ = _anatomy(load_reference())
    centre = np.round(head.TransformPhysicalPointToContinuousIndex(load_reference().center_lps("left").tolist())).astype(int)
    box = tuple(slice(c - synth.LESION_BOX_HALF_MM, c + synth.LESION_BOX_HALF_MM) for c in centre)
    sinus = cavity[box] == LESION_LABELS["left"]
    rng = np.random.default_rng(0)
    for kind, (low, high) in synth.LESION_SIZES_MM.items():
        drawn = [_draw_lesion(rng, sinus, kind) for _ in range(24)]
        sizes = np.array([size for _, _, size in drawn])
        assert low <= sizes.min() and sizes.max() <= high, kind
        middle = np.sqrt(low * high)  # log-uniform: half of the draws below the geometric middle
        assert 0.2 < np.mean(sizes < middle) < 0.8, (kind, sizes)
        assert all(mask.any() and mask[~sinus].sum() == 0 for mask, _, _ in drawn), kind
    # a small cyst is small: a dome of 4-6 mm holds well under 0.1 mL
    small = [(mask.sum(), size) for mask, _, size in (_draw_lesion(rng, sinus, "retention_cyst") for _ in range(40)) if size < 6]
    assert small and all(voxels / 1000.0 < 0.1 for voxels, _ in small)


def test_cohort_records_each_lesion_size_within_its_range(cohort):
    truth = json.loads((cohort / "truth.json").read_text(encoding="utf-8"))
    lesions = [(entry[side]["anomaly"], entry[side].get("lesion")) for entry in truth.values() for side in SIDES if entry[side]["anomaly"]]
    assert lesions
    for kind, lesion in lesions:
        assert lesion["volume_ml"] > 0, kind
        if kind in synth.LESION_SIZES_MM:
            low, high = synth.LESION_SIZES_MM[kind]
            assert low <= lesion["size_mm"] <= high, (kind, lesion)
    assert all("lesion" not in entry[side] for entry in truth.values() for side in SIDES if not entry[side]["anomaly"])


def test_cohort_files_agree(cohort):
    with open(cohort / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["patient", "side", "label", "anomaly_type", "image"]
    assert len(rows) == 8
    truth = json.loads((cohort / "truth.json").read_text(encoding="utf-8"))
    assert sorted(truth) == [f"synth-{i:04d}" for i in range(4)]
    for row in rows:
        entry = truth[row["patient"]]
        # a copy: a view of a temporary image would read freed memory (this test was flaky so)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / entry["lesion_mask"])))
        has_lesion = bool((mask == LESION_LABELS[row["side"]]).any())
        assert has_lesion == (row["label"] == "1"), row
        assert (row["anomaly_type"] == "normal") == (row["label"] == "0")
        image = read_image(cohort / "images" / row["image"])
        assert image.GetSize() == sitk.ReadImage(str(cohort / entry["lesion_mask"])).GetSize()
        spacing = np.asarray(image.GetSpacing())
        assert np.all((spacing >= 0.9 - 1e-6) & (spacing <= 2.0 + 1e-6))
    assert any(name.endswith(".nrrd") for name in (r["image"] for r in rows))  # case 3 is NRRD
    # stored as scanners do, as integers: the head made again, rounded, is what the file holds
    stored = sitk.ReadImage(str(cohort / truth["synth-0001"]["image"]))
    assert stored.GetPixelID() == sitk.sitkInt16
    made = make_case("synth-0001", np.random.default_rng([3, 1])).image
    assert np.abs(sitk.GetArrayFromImage(stored) - sitk.GetArrayFromImage(made)).max() <= 0.5


def test_previews_are_written(cohort):
    previews = sorted((cohort / "previews").glob("*.png"))
    assert 1 <= len(previews) <= 2
    assert previews[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_without_rewriting(cohort):
    images = sorted((cohort / "images").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in images}
    generate_cohort(cohort, n_cases=4, seed=3, progress=False)
    assert {p: p.stat().st_mtime_ns for p in images} == stamps


def test_cli_writes_a_cohort_and_rejects_bad_arguments(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "c"), "--cases", "1", "--seed", "1", "--previews", "0"]) == 0
    assert (tmp_path / "c" / "labels.csv").is_file()
    assert "1 synthetic heads" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "d"), "--cases", "0"]) == 2
    assert "--cases" in capsys.readouterr().err


def test_unknown_anomaly_type_is_an_error():
    with pytest.raises(SinusAnomalyError, match="unknown anomaly type"):
        make_case("x", np.random.default_rng(0), anomalies={"left": "tumour", "right": None})


def test_prepare_with_real_extraction_on_the_cohort(cohort, tmp_path):
    """synth -> prepare end to end: every scan extracted, crops cached, centres near the truth."""
    from SinusAnomalyLib.dataset import load_dataset, prepare_dataset

    report = prepare_dataset(cohort / "images", cohort / "labels.csv", tmp_path / "ds", n_folds=2, seed=0, progress=False)
    assert report.n_scans_prepared == 4 and not report.failures
    dataset = load_dataset(tmp_path / "ds")
    assert dataset.crops.shape == (8, 64, 64, 64)
    crops = np.asarray(dataset.crops, dtype=np.float32)
    assert crops.min() >= 0 and crops.max() <= 1 and crops.std() > 0.1
    truth = json.loads((cohort / "truth.json").read_text(encoding="utf-8"))
    for patient in truth:
        found = json.loads((tmp_path / "ds" / "scans" / patient / "extraction.json").read_text(encoding="utf-8"))
        for side in SIDES:
            error = np.linalg.norm(np.subtract(found[side]["center_ras_mm"], truth[patient][side]["center_ras_mm"]))
            assert error < 10.0, (patient, side, error)


def test_resume_with_other_settings_is_refused(cohort):
    with pytest.raises(SinusAnomalyError, match="other settings"):
        generate_cohort(cohort, n_cases=4, seed=4, progress=False)


def test_resume_refuses_a_knob_that_the_folder_was_made_without(tmp_path):
    """A folder made before a knob existed was made with its default: resuming it with another value
    would mix two kinds of heads in one cohort."""
    generate_cohort(tmp_path, n_cases=1, seed=0, progress=False, previews=0)
    record = json.loads((tmp_path / "synth.json").read_text(encoding="utf-8"))
    del record["params"]["septum_rate"]
    (tmp_path / "synth.json").write_text(json.dumps(record))
    generate_cohort(tmp_path, n_cases=1, seed=0, progress=False, previews=0)  # the default: the same cohort
    with pytest.raises(SinusAnomalyError, match="septum_rate"):
        generate_cohort(tmp_path, n_cases=1, seed=0, params=SynthParams(septum_rate=0.3), progress=False)


# --------------------------------------------------------------------------- opt-in variety

FIXED_POSE = dict(max_rotation_deg=0, max_translation_mm=0, anisotropic=False, spacing_range_mm=(1.0, 1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrasts_order_the_tissues_as_intended(seed):
    """Template-unit tissue levels (CSF 0.25, grey 0.45, white matter 0.6 of the bright tissue) rendered."""
    tissue = np.array([0.25, 0.45, 0.6]) * synth.TEMPLATE_BRIGHT
    csf, grey, white = _render(tissue, np.random.default_rng(seed), "t1")
    assert csf < grey < white
    csf, grey, white = _render(tissue, np.random.default_rng(seed), "t2")
    assert csf > grey > white
    csf, grey, white = _render(tissue, np.random.default_rng(seed), "flair")
    assert csf < white < grey
    assert np.array_equal(_render(tissue, np.random.default_rng(seed), "reference"), tissue)


def test_t2_rendering_draws_no_bright_rim_round_a_normal_cavity():
    """T2 turns the darker T1 range bright; the partial-volume voxels where the cavity's air meets
    tissue must fade from dark to the tissue's T2 level, not light up like mucosal thickening."""
    reference = load_reference()
    _, cavity, _ = _anatomy(reference)
    level, fraction = _tissue_layers(reference)
    t2 = _render(level, np.random.default_rng(0), "t2", _white_matter(reference), fraction)
    distance = ndi.distance_transform_edt(cavity.transpose(2, 1, 0) == 0)  # mm from the cavity, [z, y, x]
    rim = t2[(distance > 0) & (distance <= 2)]
    beyond = t2[(distance > 3) & (distance <= 6)]
    assert np.median(rim) < 0.9 * np.median(beyond)


@pytest.mark.parametrize("contrast", ["t2", "flair"])
def test_the_face_round_a_sinus_is_darker_than_its_lesions_and_the_brain_keeps_its_contrast(contrast):
    """Muscle shares grey matter's T1 range but is dark on T2 and FLAIR: rendered with the brain's
    maps it lit up round every cavity like mucosa. Next to a normal cavity, most tissue must now be
    darker than the dimmest mucosal lesion of that contrast; far from the face, T2 keeps CSF's
    range (T1 0.2-0.3) brighter than white matter, as the brain's map makes it."""
    reference = load_reference()
    _, cavity, _ = _anatomy(reference)
    level, fraction = _tissue_layers(reference)
    face = _face_weight(reference)
    rendered = _render(level, np.random.default_rng(0), contrast, _white_matter(reference), fraction, face)
    distance = ndi.distance_transform_edt(cavity.transpose(2, 1, 0) == 0)  # mm from the cavity, [z, y, x]
    round_cavity = rendered[(distance > 3) & (distance <= 10)]
    assert np.median(round_cavity) < 0.8 * synth.LESION_LEVELS[contrast][0] * synth.TEMPLATE_BRIGHT
    assert face[distance <= synth.FACE_MM[0]].min() == 1.0 and face[distance >= synth.FACE_MM[1]].max() == 0.0
    if contrast == "t2":
        scaled = level * synth.WHITE_MATTER_LEVEL / _white_matter(reference)
        brain = (distance > synth.FACE_MM[1]) & (fraction == 1.0)
        csf_range = rendered[brain & (scaled > 0.2) & (scaled < 0.3)]
        white_range = rendered[brain & (np.abs(scaled - synth.WHITE_MATTER_LEVEL) < 0.03)]
        assert np.median(csf_range) > np.median(white_range)


@pytest.mark.parametrize("contrast", ["t1", "t2", "flair"])
def test_lesions_in_other_contrasts_lie_in_the_cavity_at_their_level(contrast):
    reference = load_reference()
    params = SynthParams(contrasts=(contrast,), **FIXED_POSE)
    case = make_case("x", np.random.default_rng(4), params, anomalies={"left": "fully_occupied", "right": None},
                     reference=reference)
    assert case.pose["contrast"] == contrast
    image = sitk.GetArrayViewFromImage(case.image)
    lesion = sitk.GetArrayViewFromImage(case.lesion_labels) == LESION_LABELS["left"]
    assert lesion.sum() > 1000
    idx = np.argwhere(lesion.transpose(2, 1, 0))
    points = np.array([_world_ras(case.lesion_labels, i) for i in idx[:: max(1, len(idx) // 200)]])
    assert np.linalg.norm(points - case.centers_ras["left"], axis=1).max() < 30.0
    # level relative to the bright tissue: intermediate on T1, bright on T2 and FLAIR (gain and noise shift both)
    ratio = float(np.median(image[lesion])) / float(np.percentile(image, 99.5))
    low, high = {"t1": (0.2, 0.75), "t2": (0.5, 1.2), "flair": (0.4, 1.1)}[contrast]
    assert low < ratio < high, ratio


def test_sinus_scale_changes_each_sinus_size():
    """A fully occupied sinus (its lesion is the whole cavity) scaled by 1.3 and by 0.7 per axis at its centre
    (by about 80 % of that at its walls: measured volume ratios 1.76 and about 0.55)."""
    reference = load_reference()
    volumes = {}
    for scale in (1.0, 1.3, 0.7):
        params = SynthParams(sinus_scale_range=(scale, scale), deformation_mm=0.0, **FIXED_POSE)
        case = make_case("x", np.random.default_rng(5), params, anomalies={"left": "fully_occupied", "right": None},
                         reference=reference)
        volumes[scale] = float((sitk.GetArrayViewFromImage(case.lesion_labels) == LESION_LABELS["left"]).sum()
                               * np.prod(case.lesion_labels.GetSpacing()))
    assert 1.5 < volumes[1.3] / volumes[1.0] < 2.3, volumes
    assert 0.35 < volumes[0.7] / volumes[1.0] < 0.75, volumes


@pytest.mark.parametrize("scale", SINUS_SCALE_LIMITS)
def test_sinus_scales_at_the_allowed_limits_do_not_fold_the_head(scale):
    """Each end of the range ``synth --sinus-scale`` accepts keeps the deformation invertible (Jacobian
    determinant above 0 everywhere) with the default deformation and a 3 mm shape change."""
    for anatomy in ANATOMIES:
        head = load_anatomy(anatomy)
        for seed in range(2):
            field = _displacement(head, np.random.default_rng(seed), SynthParams().deformation_mm, (scale, scale), 3.0)
            jacobian = sitk.DisplacementFieldJacobianDeterminant(sitk.Cast(field.GetDisplacementField(), sitk.sitkVectorFloat64))
            assert sitk.GetArrayViewFromImage(jacobian).min() > 0.0, (anatomy, seed)


def test_a_sinus_scale_that_would_fold_the_head_is_refused(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["synth", "--out", "unused", "--cases", "1", "--sinus-scale", "0.5,1.3"])
    assert stopped.value.code == 2 and "--sinus-scale: expected 0.6 <= LOW" in capsys.readouterr().err


def test_floor_first_thickening_sits_low_in_the_cavity():
    reference = load_reference()
    _, cavity, _ = _anatomy(reference)
    box = np.argwhere(cavity == LESION_LABELS["left"])
    lo, hi = box.min(0), box.max(0) + 1
    left = cavity[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == LESION_LABELS["left"]
    lowest = []
    for seed in range(4):
        lesion, _, _ = _draw_lesion(np.random.default_rng(seed), left, "mucosal_thickening", floor_first=True)
        assert lesion.any() and not (lesion & ~left).any()
        lowest.append(np.argwhere(lesion)[:, 2].mean() < np.argwhere(left)[:, 2].mean())
        assert lesion[:, :, :3].sum() > 0  # the floor is always covered
    assert all(lowest)


def test_default_cohort_draws_no_extra_random_numbers():
    """The opt-in variety leaves the default heads as they were: same generator state afterwards."""
    reference = load_reference()
    rng_default, rng_explicit = np.random.default_rng(9), np.random.default_rng(9)
    make_case("x", rng_default, SynthParams(), reference=reference)
    make_case("x", rng_explicit, SynthParams(contrasts=("reference",), sinus_scale_range=(1.0, 1.0),
                                             anomaly_types=synth.DEFAULT_ANOMALY_TYPES, sinus_shape_mm=0.0,
                                             wall_thickness_mm=(0.0, 0.0), septum_rate=0.0), reference=reference)
    assert rng_default.random() == rng_explicit.random()


def test_unknown_contrast_is_an_error(capsys):
    with pytest.raises(SinusAnomalyError, match="unknown contrast"):
        make_case("x", np.random.default_rng(0), SynthParams(contrasts=("pd",)))
    with pytest.raises(SystemExit) as info:  # argparse's own refusal of a bad option value
        main(["synth", "--out", "unused", "--contrasts", "t1,pd"])
    assert info.value.code == 2
    assert "expected comma-separated contrasts" in capsys.readouterr().err


def test_anatomies_have_their_own_cavities():
    cavities = {}
    for name in ANATOMIES:
        anatomy = load_anatomy(name)
        labels = sitk.GetArrayViewFromImage(anatomy.sinus_labels)
        voxel_ml = float(np.prod(anatomy.sinus_labels.GetSpacing())) / 1000.0
        cavities[name] = [round(float((labels == value).sum() * voxel_ml), 1) for value in (1, 2)]
        assert all(volume > 3.0 for volume in cavities[name]), cavities
        for side in SIDES:  # each centre lies in its own cavity
            index = anatomy.sinus_labels.TransformPhysicalPointToIndex(anatomy.center_lps(side).tolist())
            assert anatomy.sinus_labels[index] == LESION_LABELS[side], (name, side)
    assert len({tuple(v) for v in cavities.values()}) == len(ANATOMIES), cavities


def test_a_head_from_a_real_anatomy_keeps_its_field_of_view():
    """Colin27 ends inside the sinuses: its synthetic heads are zero beyond that, the lesion lies in the cavity."""
    params = SynthParams(anatomies=("colin27",), contrasts=("flair",), **FIXED_POSE)
    case = make_case("x", np.random.default_rng(2), params, anomalies={"left": "polyp", "right": None})
    assert case.pose["anatomy"] == "colin27"
    image = sitk.GetArrayViewFromImage(case.image)
    assert (image == 0).mean() > 0.02  # zero padding below the cut
    lesion = np.argwhere((sitk.GetArrayViewFromImage(case.lesion_labels) == LESION_LABELS["left"]).transpose(2, 1, 0))
    assert len(lesion) > 20
    points = np.array([_world_ras(case.lesion_labels, i) for i in lesion[:: max(1, len(lesion) // 100)]])
    assert np.linalg.norm(points - case.centers_ras["left"], axis=1).max() < 30.0
    with pytest.raises(SinusAnomalyError, match="unknown anatomy"):
        make_case("x", np.random.default_rng(0), SynthParams(anatomies=("mni152",)))


# --------------------------------------------------------------------------- lesion kinds, bone, shape (issue 15)

BONY = SynthParams(wall_thickness_mm=(1.0, 2.5), septum_rate=1.0)
DOWN_LPS = np.array([0.0, 1.0, 0.0])  # posterior: down for a supine head


def _lesioned(kind, contrast, params=BONY, seed=3):
    """1 mm anatomy arrays [x, y, z] of the reference with ``kind`` drawn in the left sinus: (image, left lesion, left cavity)."""
    reference = load_reference()
    _, cavity, _ = _anatomy(reference)
    image, labels = _lesioned_anatomy(reference, np.random.default_rng(seed), {"left": kind, "right": None},
                                            contrast, params, DOWN_LPS)
    image = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    labels = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
    assert not (labels == LESION_LABELS["right"]).any()
    return image, labels == LESION_LABELS["left"], cavity == LESION_LABELS["left"]


@pytest.mark.parametrize("contrast", ["reference", "t2"])
@pytest.mark.parametrize("kind", ANOMALY_TYPES)
def test_each_lesion_kind_lies_in_the_cavity_and_matches_its_mask(kind, contrast):
    """With a bony wall and a septum: the mask lies inside the cavity, and the cavity's voxels brighter than
    halfway from its air to the lesion are the mask's (Dice; the mask's edge is blurred by partial volume)."""
    # the first seed whose lesion is large enough for its edge (blurred by partial volume) not to rule the Dice
    image, lesion, cavity = next(drawn for drawn in (_lesioned(kind, contrast, seed=seed) for seed in range(12)) if drawn[1].sum() > 200)
    assert not (lesion & ~cavity).any()
    air = np.median(image[cavity & ~ndi.binary_dilation(lesion, iterations=2)]) if kind != "fully_occupied" else synth.AIR_LEVEL
    bright = cavity & (image > (np.median(image[lesion]) + air) / 2)
    dice = 2 * (bright & lesion).sum() / (bright.sum() + lesion.sum())
    assert dice > 0.9, (kind, contrast, dice)


def test_bony_wall_and_septum_are_dark_and_left_out_of_the_lesion():
    """A fully occupied sinus fills what the wall layer and the septum leave of the cavity; those are dark."""
    image, lesion, cavity = _lesioned("fully_occupied", "reference")
    bone = cavity & ~lesion
    assert 0.1 < bone.sum() / cavity.sum() < 0.5
    edge = cavity & ~ndi.binary_erosion(cavity)
    assert (bone & edge).sum() / edge.sum() > 0.9  # the wall lines the cavity's edge
    assert (bone & ndi.binary_erosion(cavity, iterations=4)).sum() > 50  # the septum reaches inside
    core = bone & ndi.binary_erosion(bone)  # away from the blurred edges of the lesion
    assert np.median(image[core]) < synth.WALL_LEVEL[1] * synth.TEMPLATE_BRIGHT < 0.5 * np.median(image[lesion])
    # without the options no bone is drawn: the lesion is the whole cavity
    _, plain, cavity = _lesioned("fully_occupied", "reference", SynthParams())
    assert np.array_equal(plain, cavity)


def test_fluid_is_dark_on_t1_and_bright_on_t2_relative_to_white_matter():
    reference = load_reference()
    template = sitk.GetArrayViewFromImage(_anatomy(reference)[0]).transpose(2, 1, 0)
    white_matter = np.abs(template - _white_matter(reference)) < 3.0
    for contrast, darker in (("t1", True), ("t2", False)):
        for seed in range(3):
            image, lesion, _ = _lesioned("air_fluid_level", contrast, SynthParams(), seed)
            assert (np.median(image[lesion]) < np.median(image[white_matter])) == darker, (contrast, seed)


def _world_lps_view(image: sitk.Image, centre_lps, interpolator) -> np.ndarray:
    """``image`` on a 1 mm grid aligned with the scanner's LPS axes around ``centre_lps``: array [x, y, z]."""
    box = sitk.Image([48, 48, 48], image.GetPixelID())
    box.SetOrigin((np.asarray(centre_lps) - 23.5).tolist())
    return sitk.GetArrayFromImage(sitk.Resample(image, box, sitk.Transform(), interpolator, 0)).transpose(2, 1, 0)


def test_air_fluid_level_is_horizontal_in_the_scanner_with_fluid_posterior():
    """A supine head turned by 10-15 degrees: the fluid's free surface (fluid voxels with air in front) is a
    plane perpendicular to the scanner's y (tilted under 8 degrees), and the fluid lies behind the air."""
    params = SynthParams(anomaly_types=("air_fluid_level",), max_translation_mm=0, anisotropic=False,
                         spacing_range_mm=(1.0, 1.0))
    case = make_case("x", np.random.default_rng(1), params, anomalies={"left": "air_fluid_level", "right": None})
    assert case.pose["rotation_deg"] > 10.0, case.pose  # the head is turned: drawn level in the head would tilt
    centre = np.diag([-1.0, -1.0, 1.0]) @ case.centers_ras["left"]
    fluid = _world_lps_view(case.lesion_labels, centre, sitk.sitkNearestNeighbor) == LESION_LABELS["left"]
    image = _world_lps_view(case.image, centre, sitk.sitkLinear)
    air = (image < 0.25 * np.median(image[fluid])) & ~fluid
    surface = fluid & np.roll(air, 1, axis=1) & np.roll(air, 2, axis=1)  # air 1 and 2 mm in front (smaller LPS y)
    points = np.argwhere(surface).astype(float)
    assert len(points) > 30
    normal = np.linalg.svd(points - points.mean(0), full_matrices=False)[2][-1]
    assert np.degrees(np.arccos(abs(normal[1]))) < 8.0, normal
    in_front = np.argwhere(air & ndi.binary_dilation(fluid, iterations=6))[:, 1]
    assert np.median(np.argwhere(fluid)[:, 1]) > np.median(in_front)


def test_two_anatomies_have_differently_shaped_cavities():
    """Each cavity centred and scaled to the same volume: the same side of two anatomies overlaps by Dice < 0.9."""
    grid = np.indices((48, 48, 48)).reshape(3, -1).T - 23.5

    def normalised(name, value):
        _, cavity, _ = _anatomy(load_anatomy(name))
        points = np.argwhere(cavity == value)
        source = np.round(grid * (len(points) / 8000.0) ** (1 / 3) + points.mean(0)).astype(int)
        inside = np.all((source >= 0) & (source < cavity.shape), 1)
        shape = np.zeros(len(grid), bool)
        shape[inside] = cavity[tuple(source[inside].T)] == value
        return shape

    for value in (1, 2):
        shapes = [normalised(name, value) for name in ANATOMIES]
        for i in range(len(shapes)):
            for j in range(i + 1, len(shapes)):
                dice = 2 * (shapes[i] & shapes[j]).sum() / (shapes[i].sum() + shapes[j].sum())
                assert dice < 0.9, (ANATOMIES[i], ANATOMIES[j], value, dice)


def test_sinus_shape_changes_each_sinus_on_its_own():
    """Fully occupied sinuses (lesion = cavity) with and without each sinus's own shape change, compared in the
    scanner's space (the change's random numbers shift the grid's random orientation)."""
    reference = load_reference()
    labels = {}
    for amplitude in (0.0, 3.0):
        params = SynthParams(sinus_shape_mm=amplitude, deformation_mm=0.0, **FIXED_POSE)
        case = make_case("x", np.random.default_rng(5), params, anomalies={"left": "fully_occupied", "right": "fully_occupied"},
                         reference=reference)
        labels[amplitude] = case.lesion_labels
    masks = {0.0: sitk.GetArrayFromImage(labels[0.0]),
             3.0: sitk.GetArrayFromImage(sitk.Resample(labels[3.0], labels[0.0], sitk.Transform(), sitk.sitkNearestNeighbor, 0))}
    dices = []
    for value in LESION_LABELS.values():
        a, b = masks[0.0] == value, masks[3.0] == value
        dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert all(0.6 < d < 0.97 for d in dices), dices
    # each side by its own field: the change near the left sinus is no mirror image of the one near the right
    fields = [_displacement(reference, np.random.default_rng(5), 0.0, (1.0, 1.0), amplitude) for amplitude in (0.0, 3.0)]
    offsets = np.random.default_rng(0).uniform(-12, 12, (200, 3))
    change = {}
    for side, mirror in (("left", 1.0), ("right", -1.0)):
        points = reference.center_lps(side) + offsets * [mirror, 1.0, 1.0]
        change[side] = np.array([np.subtract(fields[1].TransformPoint(p.tolist()), fields[0].TransformPoint(p.tolist()))
                                 for p in points]) * [mirror, 1.0, 1.0]
        assert 0.5 < np.linalg.norm(change[side], axis=1).max() <= 3.0 * np.sqrt(3), side
    assert np.corrcoef(change["left"].ravel(), change["right"].ravel())[0, 1] < 0.5


FULL_VARIETY = SynthParams(anatomies=("reference", "colin27"), contrasts=("t1", "t2", "flair"), sinus_scale_range=(0.7, 1.3),
                           floor_first_thickening=True, anomaly_types=ANOMALY_TYPES, sinus_shape_mm=3.0,
                           wall_thickness_mm=(0.0, 2.5), septum_rate=0.3, anomaly_rate=1.0)


def test_full_variety_same_seed_same_head():
    a = make_case("a", np.random.default_rng([8, 1]), FULL_VARIETY)
    b = make_case("a", np.random.default_rng([8, 1]), FULL_VARIETY)
    assert a.anomalies == b.anomalies and a.pose == b.pose
    assert np.array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(b.image))
    assert np.array_equal(sitk.GetArrayViewFromImage(a.lesion_labels), sitk.GetArrayViewFromImage(b.lesion_labels))


def test_cli_variety_flags(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "c"), "--cases", "1", "--seed", "2", "--previews", "0",
                 "--anomaly-types", "air_fluid_level", "--anomaly-rate", "1", "--sinus-shape-mm", "2",
                 "--wall-thickness", "0,2", "--septum-rate", "0.5"]) == 0
    settings = json.loads((tmp_path / "c" / "synth.json").read_text(encoding="utf-8"))["params"]
    assert settings["anomaly_types"] == ["air_fluid_level"] and settings["wall_thickness_mm"] == [0.0, 2.0]
    assert settings["sinus_shape_mm"] == 2.0 and settings["septum_rate"] == 0.5
    with open(tmp_path / "c" / "labels.csv", newline="") as fh:
        assert {row["anomaly_type"] for row in csv.DictReader(fh)} <= {"air_fluid_level", "normal"}
    capsys.readouterr()
    for bad in (["--septum-rate", "2"], ["--wall-thickness", "2,1"], ["--anomaly-types", "tumour"], ["--sinus-shape-mm", "x"]):
        with pytest.raises(SystemExit) as info:
            main(["synth", "--out", str(tmp_path / "d"), *bad])
        assert info.value.code == 2
        assert "expected" in capsys.readouterr().err, bad


def test_synth_is_a_package_of_single_purpose_modules_that_re_exports_its_public_names():
    """Each module has a docstring saying its job and stays under 600 lines; every public name of a
    module is the package's too (``from SinusAnomalyLib.synth import X``), the very same object, so
    the anatomy is prepared and cached once whichever module asks."""
    import ast
    import importlib
    from pathlib import Path

    from SinusAnomalyLib.synth import case, lesions, pose

    modules = sorted(Path(synth.__file__).parent.glob("*.py"))
    assert {p.stem for p in modules} >= {"__init__", "anatomy", "contrast", "lesions", "pose", "preview", "cohort"}
    for path in modules:
        text = path.read_text(encoding="utf-8")
        assert ast.get_docstring(ast.parse(text)), path.name
        assert len(text.splitlines()) < 600, path.name
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"SinusAnomalyLib.synth.{path.stem}")
        for node in ast.parse(text).body:
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
                [t.id for t in node.targets] if isinstance(node, ast.Assign) else []
            for name in names:
                if not name.startswith("_"):
                    assert name in synth.__all__ and getattr(synth, name) is getattr(module, name), (path.name, name)
    assert lesions._anatomy is case._anatomy is pose._anatomy is _anatomy
