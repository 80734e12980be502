"""Report lines on a bundle's heat map, label map and out-of-distribution check, from its bundle.json
(the blocks :mod:`SinusAnomalyTraining.calibration` fits; see :mod:`SinusAnomalyLib.heatmap`)."""
from __future__ import annotations

from pathlib import Path

from SinusAnomalyLib.dataset import PreparedDataset
from SinusAnomalyLib.heatmap import VOLUME_AS_ML, VOLUME_TOLERANCE

from . import calibration
from .config import RunConfig
from .engine import load_checkpoint

DEFAULT_LABEL_LEVEL = 0.5  # without lesion masks to choose one on


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:+.0f} %"


def _share(value) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def ood_count(results: list) -> tuple[int, int]:
    """(sides flagged out of distribution, sides checked) over classification results."""
    flags = [r.out_of_distribution for result in results for r in result.sides.values() if r.out_of_distribution is not None]
    return sum(flags), len(flags)


def heatmap_lines(meta: dict, elsewhere: dict | None = None) -> list[str]:
    """Markdown: the heat map's scale, the label's level, Dice and volume error per lesion kind on the
    test sinuses, what the volume is shown as, and how often the OOD check fired on the test sinuses
    and on each of ``elsewhere`` ({description: (fired, checked)})."""
    heat = meta.get("heatmap")
    if heat is None:
        return ["The bundle has no normal-sinus scale (its run's dataset was not found at export): per-crop heat map, "
                "no out-of-distribution check.", ""]
    lines = [f"Heat map: residual median {heat['residual_median']:.4f} of the normal calibration sinuses at 0, their "
             f"{heat['high_percentile']:g}th percentile {heat['residual_high']:.4f} at {heat['heat_at_high']:g} "
             f"({heat['calibrated_on']}). Label level {float(meta['residual_threshold']):.3f} on that scale.", ""]
    validation = meta.get("label_validation")
    if validation is None:
        lines += ["The label was not checked against lesion masks (the cohort has none): its volume is shown as a coarse "
                  "region.", ""]
    else:
        test, levels = validation["test"], validation["heat_levels_test"]
        lines += [
            f"Level chosen by {validation['level_chosen_on']}. On the test sinuses: normal sinuses have a median "
            f"{_share(levels['normal_cavity_share_at_level'])} of their cavity at or above the level "
            f"({levels['normal_sinuses']} sinuses); true lesions a median {_share(levels['lesion_share_at_level'])} of their "
            f"voxels ({levels['lesion_sinuses']} sinuses).",
            "",
            f"| lesion kind (test) | lesions | median Dice | median volume error | within ±{VOLUME_TOLERANCE:.0%} |",
            "|---|---|---|---|---|",
            *[f"| {kind} | {m['n_lesions']} | {m['median_dice']:.2f} | {_pct(m['median_volume_error'])} | "
              f"{_share(m['within_tolerance'])} |" for kind, m in [*test["by_kind"].items(), ("all", test)]],
            "",
            "Volume shown as: " + ("millilitres" if validation["volume_shown_as"] == VOLUME_AS_ML else
                                   "a coarse region, not millilitres") + f" ({validation['volume_rule']}).",
            "",
        ]
    ood = meta.get("ood")
    if ood is not None:
        fired = [f"{ood['test_fired']} of {ood['test_sinuses']} held-out test sinuses of the cohort"]
        fired += [f"{n} of {total} assessed sinuses of {what}" for what, (n, total) in (elsewhere or {}).items()]
        lines += [f"Out-of-distribution check ({ood['measure']}; range {ood['low']:.4f}-{ood['high']:.4f} on "
                  f"{ood['calibrated_on']}, widened by a factor {ood['margin']:g}) fired on " + "; ".join(fired) + ".", ""]
    return lines


def evaluation_lines(config: RunConfig, dataset: PreparedDataset, run_dir: Path, folds: list[int]) -> list[str]:
    """Markdown for the evaluation report: :func:`heatmap_lines` of what each fold's CAE would give
    a bundle exported from it (calibrated as export does)."""
    lines = []
    for fold in folds:
        checkpoint = Path(run_dir) / f"fold{fold}" / "cae" / "best.pt"
        if not checkpoint.is_file():
            continue
        cae = calibration.cae_from_state(config, load_checkpoint(checkpoint)["model"])
        fitted = calibration.calibrate(dataset, fold, cae, config.cae_size, config.residuals.median_kernel)
        lines += [f"### Fold {fold}'s CAE", "", *heatmap_lines({"residual_threshold": DEFAULT_LABEL_LEVEL, **fitted})]
    if not lines:
        return []
    return ["", "## Heat map, label map and out-of-distribution check (as a bundle from each fold's CAE gets them)", "",
            *lines]
