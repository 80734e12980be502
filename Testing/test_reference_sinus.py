"""The reference sinus built from real heads, each side placed on the scan's air, and what follows:
centred crops and true coverage on a real head whose sinuses are wholly in view (the ROBEX atlas),
measured against a reference sinus built WITHOUT that head (leave one out); the registration's
fallback keeping its best passing fit."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import SimpleITK as sitk

from heads import floor_cut, full_centre_error, posed, real_heads, reference_without
from SinusAnomalyLib import registration
from SinusAnomalyLib.extraction import extract_sinuses, shown_in_scan
from SinusAnomalyLib.reference import SIDES, cavity_points_lps, load_reference, load_template_cores
from SinusAnomalyLib.sinusrefine import refine_side
from SinusAnomalyLib.synth import SynthParams, make_case


@pytest.fixture(scope="module")
def robex():
    return next(head for head in real_heads() if head.anatomy == "robex_atlas")


@pytest.fixture(scope="module")
def reference_without_robex():
    return reference_without("robex_atlas")


def test_the_shipped_reference_sinus_is_larger_than_the_averages_dark_core():
    """Built from the real heads' cavities: the average's own core held 5.4/5.5 mL."""
    shipped, core = load_reference(), load_template_cores()
    for side in SIDES:
        assert len(cavity_points_lps(shipped, side)) > 1.3 * len(cavity_points_lps(core, side)), side
    assert shipped.meta["sinus_atlas"]["built_from"] == ["colin27", "single_subject_t1", "robex_atlas"]


def test_a_head_the_reference_sinus_was_not_built_from_gets_centred_crops(robex, reference_without_robex):
    """The ROBEX atlas (whole cavities in view), as it comes and posed as T2- and FLAIR-like scans,
    against the reference sinus built from the other heads: the crop centres land on the whole air
    cavities (the issue's goal: median <= 3 mm, max <= 6 mm; before: 7.4-8.1 mm, almost all superior)."""
    errors = []
    for variant in (robex, posed(robex, 1, "t2"), posed(robex, 2, "flair")):
        result = extract_sinuses(variant.image, reference_without_robex, source=variant.name)
        assert all(result.assessable(side) for side in SIDES)
        errors += [full_centre_error(variant, result, side) for side in SIDES]
    assert np.median(errors) <= 3.0 and max(errors) <= 6.0, errors


def test_a_field_of_view_that_cuts_the_sinus_floors_reads_as_partial_coverage(robex, reference_without_robex):
    """Coverage follows the placed reference sinus: a scan ending a quarter of the way up the
    cavities reads within 0.1 of the true share of each in view, and below 1 (the average's core,
    high in the sinus, read 1.00 for such cuts)."""
    cut, truth = floor_cut(robex, 0.75)
    result = extract_sinuses(cut.image, reference_without_robex, source=cut.name)
    for side in SIDES:
        assert result.coverage[side] < 0.95, result.coverage
        assert abs(result.coverage[side] - truth[side]) <= 0.1, (side, result.coverage, truth)


def test_placement_recovers_a_misplaced_sinus_and_leaves_an_occupied_one_alone():
    """A synthetic head with one normal and one fully occupied sinus: with the registration moved
    6 mm up, the normal side's placement brings the sinus back onto its air; the occupied side has
    no air and keeps the registration's placement (shift 0)."""
    case = make_case("placement", np.random.default_rng(3), SynthParams(), anomalies={"left": None, "right": "fully_occupied"})
    reference = load_reference()
    fit = registration.register_to_reference(case.image, reference, "placement")
    moved = fit.matrix_lps.copy()
    moved[:3, 3] += moved[:3, :3] @ np.array([0.0, 0.0, 6.0])  # the reference sinus 6 mm too high
    shown = functools.partial(shown_in_scan, case.image, fit.fill)
    left = refine_side(case.image, moved, cavity_points_lps(reference, "left"), shown)
    assert left.reason == "air" and left.air_ml > 2.0
    assert -9.0 < left.shift_lps[2] < -3.0, left.shift_lps
    right = refine_side(case.image, moved, cavity_points_lps(reference, "right"), shown)
    assert right.reason.startswith("registration") and not right.shift_lps.any(), right


def test_the_registration_fallback_keeps_the_best_passing_fit_not_the_first(monkeypatch):
    """When the first fit fails the checks, every fallback start is fitted and, of the fits that
    pass, the one with the highest midface quality is kept."""
    image = make_case("fallback", np.random.default_rng(4), SynthParams()).image
    real_problem = registration.plausibility_problem
    checked = []  # (quality, passes) of every fit checked after the first start's

    def first_start_fails(result, reference):
        # the first three checks are the first start's: its fit, the retry from shifted midface
        # starts, and the check that sends the fits to the fallback starts
        if len(checked) < 3:
            checked.append(None)
            return "made to fail"
        problem = real_problem(result, reference)
        checked.append((result.quality, problem is None))
        return problem

    monkeypatch.setattr(registration, "plausibility_problem", first_start_fails)
    result = registration.register_to_reference(image, load_reference(), "fallback", check=False)
    passing = [quality for quality, passes in checked[3:] if passes]
    assert len(set(passing)) >= 2, checked  # more than one start passed: the choice matters
    assert any(stage["stage"] == "fallback" for stage in result.stages)
    assert result.quality == max(passing), (result.quality, checked)


def test_the_atlas_counts_only_heads_that_show_a_voxel():
    """Per voxel, a head whose field of view does not show it does not vote: a cavity seen by the one
    head in view is kept where the others are blind (the sinus floor below an MNI-space cut)."""
    from SinusAnomalyLib.sinusatlas import LABEL_VALUES, MappedCavity, build_atlas

    template = load_template_cores()
    shape = sitk.GetArrayViewFromImage(template.sinus_labels).shape[::-1]
    core = sitk.GetArrayFromImage(template.sinus_labels).transpose(2, 1, 0)
    floor = np.zeros(shape, bool)
    left_core = np.argwhere(core == LABEL_VALUES["left"])
    low = left_core[:, 2].min()
    floor[left_core[:, 0].min():left_core[:, 0].max() + 1, left_core[:, 1].min():left_core[:, 1].max() + 1, low - 6:low] = True
    whole = MappedCavity("whole", {"left": (core == 1) | floor, "right": core == 2}, np.ones(shape, bool))
    cut = np.ones(shape, bool)
    cut[:, :, :low] = False  # these two end at the core's floor
    blind = [MappedCavity(f"cut{i}", {"left": core == 1, "right": core == 2}, cut) for i in range(2)]
    atlas = build_atlas([whole] + blind, template)
    assert atlas.probability["left"][floor].min() == pytest.approx(1.0 / (1.0 + 0.5))  # one head in view, no prior there
    assert (sitk.GetArrayFromImage(atlas.labels).transpose(2, 1, 0)[floor] == LABEL_VALUES["left"]).all()
