"""Render the extension's screenshots from a real ``classify`` output.

    python Resources/Scripts/make_screenshots.py [--out SinusAnomaly/Resources/Screenshots] [--seed 1]

1. one synthetic head with a lesion: ``sinus-anomaly synth --cases 1`` (all heads anomalous);
2. a demo-size bundle of RANDOM weights (the builder the tests and benchmarks use: no trained model
   ships with the project, and the screenshots say so);
3. ``sinus-anomaly classify`` of that head with that bundle (the command the module runs);
4. what the module shows, drawn with matplotlib from the classify output: axial, coronal and
   sagittal slices through a sinus with the heat map and the anomaly label map over the head and
   both 64 mm crop boxes (``SinusAnomaly-slices.png``), and the results table with the model line
   and any warnings (``SinusAnomaly-results.png``).

Slices are resampled onto a 1 mm RAS grid; axial and coronal views show the patient's right on the
left of the image, as Slicer does. Needs the toolkit's dependencies (torch, MONAI, matplotlib).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
for _path in (REPO, REPO / "SinusAnomaly"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import SimpleITK as sitk  # noqa: E402

from SinusAnomalyLib.resultformat import LABEL_VALUES, SIDES  # noqa: E402
from SinusAnomalyMRMLLib.resultinfo import TABLE_COLUMNS, crop_box, model_line, read_result, result_rows, warnings_of  # noqa: E402

DEMO_SIZE = {"crop": 32, "widths": (16, 32, 64, 128), "cae_channels": (8, 16, 32), "latent_dim": 128, "folds": 2}
SIDE_COLORS = {"left": (0.97, 0.55, 0.10), "right": (0.20, 0.60, 1.00)}  # as the module's label colours
FIELD_MM = (150.0, 120.0, 110.0)  # R-L, A-P, S-I extent of the rendered region around the sinuses
HEAT_SHOWN_FROM = 0.05  # as the module: lower heat is transparent
CAPTION = ("Synthetic head from sinus-anomaly synth, classified with a RANDOM-WEIGHT test bundle: "
           "the screenshot shows what the module displays, not a diagnosis.")


def run_cli(*args: str) -> None:
    command = [sys.executable, str(REPO / "SinusAnomalyTraining" / "slicer_script.py"), *args]
    print("running:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def make_classify_output(work: Path, seed: int) -> tuple[Path, Path]:
    """(input image, classify output folder), made by the real commands."""
    import torch  # noqa: PLC0415

    from SinusAnomalyLib.bundle import build_untrained_bundle  # noqa: PLC0415

    torch.manual_seed(seed)  # the same random weights on every run

    cohort = work / "cohort"
    run_cli("synth", "--out", str(cohort), "--cases", "1", "--seed", str(seed), "--anomaly-rate", "1", "--previews", "0")
    image = next(p for p in sorted((cohort / "images").iterdir()) if p.is_file())
    bundle = build_untrained_bundle(work / "random-demo-size.sabundle", DEMO_SIZE["crop"], DEMO_SIZE["widths"],
                                    DEMO_SIZE["cae_channels"], DEMO_SIZE["latent_dim"], DEMO_SIZE["folds"])
    out = work / "classified"
    run_cli("classify", str(image), "--model", str(bundle), "--out", str(out), "--device", "cpu")
    return image, out


def ras_grid(center_ras: np.ndarray) -> sitk.Image:
    """A 1 mm axis-aligned reference grid (LPS, as SimpleITK) of FIELD_MM around ``center_ras``."""
    size = [int(round(v)) for v in FIELD_MM]
    center_lps = np.array([-center_ras[0], -center_ras[1], center_ras[2]])
    origin = center_lps - (np.asarray(size) - 1) / 2.0
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetOrigin(tuple(float(v) for v in origin))
    grid.SetSpacing((1.0, 1.0, 1.0))
    return grid


def resample(image: sitk.Image, grid: sitk.Image, nearest: bool = False) -> np.ndarray:
    """``image`` on ``grid`` as an array indexed [x, y, z] (LPS: x towards patient left, y posterior, z superior)."""
    out = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, 0.0,
                        sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def grid_points_ras(grid: sitk.Image) -> np.ndarray:
    """RAS coordinates of every grid voxel, shape (x, y, z, 3)."""
    size = grid.GetSize()
    origin = np.asarray(grid.GetOrigin())
    axes = [origin[i] + np.arange(size[i]) for i in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return np.stack([-x, -y, z], axis=-1)


def inside_box(points_ras: np.ndarray, entry: dict) -> np.ndarray:
    center, rotation, size = crop_box(entry)
    local = (points_ras - center) @ rotation  # coordinates along the crop's axes
    return np.all(np.abs(local) <= size / 2.0, axis=-1)


def views(center_index):
    """(title, slicer for [x, y, z] arrays, transpose to (rows, cols) with image-up first, axis letters)."""
    i, j, k = center_index
    return [
        ("Axial", (slice(None), slice(None), k), lambda a: a.T, ("R", "L", "A", "P")),  # rows: anterior at top
        ("Coronal", (slice(None), j, slice(None)), lambda a: a.T[::-1], ("R", "L", "S", "I")),
        ("Sagittal", (i, slice(None), slice(None)), lambda a: a.T[::-1], ("A", "P", "S", "I")),
    ]


def render_slices(image_path: Path, result_dir: Path, result: dict, out_file: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.colors import ListedColormap  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    centres = {side: np.asarray(result["sides"][side]["center_ras_mm"], float) for side in SIDES}
    grid = ras_grid((centres["left"] + centres["right"]) / 2.0)
    files = result.get("files") or {}
    head = resample(sitk.ReadImage(str(image_path), sitk.sitkFloat32), grid)
    heat = resample(sitk.ReadImage(str(result_dir / files.get("heatmap", "heatmap.nii.gz")), sitk.sitkFloat32), grid)
    labels = resample(sitk.ReadImage(str(result_dir / files.get("labelmap", "labelmap.nii.gz"))), grid, nearest=True)
    points = grid_points_ras(grid)
    boxes = {side: inside_box(points, result["sides"][side]) for side in SIDES}

    # slices through the sinus with the most labelled voxels (else the left one)
    counts = {side: int((labels == LABEL_VALUES[side]).sum()) for side in SIDES}
    focus = max(SIDES, key=lambda side: (counts[side], side == "left"))
    centre_lps = np.array([-centres[focus][0], -centres[focus][1], centres[focus][2]])
    index = tuple(int(round(v)) for v in (centre_lps - np.asarray(grid.GetOrigin())))
    low, high = np.percentile(head[head > 0], [1, 99]) if np.any(head > 0) else (0.0, 1.0)
    heat_colors = plt.get_cmap("inferno")

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 5.2), facecolor="black")
    for ax, (title, cut, orient, letters) in zip(axes, views(index)):
        ax.set_facecolor("black")
        ax.imshow(orient(head[cut]), cmap="gray", vmin=low, vmax=high, interpolation="bilinear")
        shown = np.ma.masked_less(orient(heat[cut]), HEAT_SHOWN_FROM)
        ax.imshow(shown, cmap=heat_colors, vmin=0.0, vmax=1.0, alpha=0.45, interpolation="nearest")
        label_slice = orient(labels[cut])
        for side in SIDES:
            mask = (label_slice == LABEL_VALUES[side]).astype(float)
            if mask.any():
                ax.imshow(np.ma.masked_equal(mask, 0), cmap=ListedColormap([SIDE_COLORS[side]]), alpha=0.55,
                          interpolation="nearest")
            box = orient(boxes[side][cut]).astype(float)
            if box.any():
                ax.contour(box, levels=[0.5], colors=[SIDE_COLORS[side]], linewidths=1.6, linestyles="--")
        ax.set_title(f"{title} (through the {focus} sinus)", color="white", fontsize=11)
        rows, cols = orient(head[cut]).shape
        for text, (x, y) in zip(letters, ((4, rows / 2), (cols - 4, rows / 2), (cols / 2, 5), (cols / 2, rows - 5))):
            ax.text(x, y, text, color="yellow", fontsize=10, ha="center", va="center", weight="bold")
        ax.set_xticks([])
        ax.set_yticks([])
    legend = [Patch(color=SIDE_COLORS["left"], label="anomaly label, left (1)"),
              Patch(color=SIDE_COLORS["right"], label="anomaly label, right (2)"),
              Line2D([], [], color=SIDE_COLORS["left"], linestyle="--", label="left 64 mm crop box"),
              Line2D([], [], color=SIDE_COLORS["right"], linestyle="--", label="right 64 mm crop box"),
              Patch(color=heat_colors(0.8), label="heat map (residuals, 0-1)")]
    fig.legend(handles=legend, loc="lower center", ncol=5, frameon=False, labelcolor="white", fontsize=9,
               bbox_to_anchor=(0.5, 0.045))
    fig.text(0.5, 0.012, CAPTION, color="#bbbbbb", ha="center", fontsize=8.5)
    fig.suptitle("SinusAnomaly: heat map, anomaly labels and crop boxes over the input head MRI", color="white", fontsize=13)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.13, wspace=0.03)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=110, facecolor="black")
    plt.close(fig)


def render_results(result: dict, out_file: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = result_rows(result)
    fig, ax = plt.subplots(figsize=(9.0, 3.0))
    ax.axis("off")
    table = ax.table(cellText=[list(row) for row in rows], colLabels=list(TABLE_COLUMNS), loc="upper center",
                     cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(11)
    table.scale(1.0, 1.8)
    lines = [f"Model: {model_line(result)}"] + [f"Warning: {w}" for w in warnings_of(result)] + ["", CAPTION]
    ax.text(0.0, 0.36, "\n".join(lines), transform=ax.transAxes, fontsize=9, va="top", wrap=True)
    ax.set_title("SinusAnomaly results table (one row per maxillary sinus)", fontsize=12)
    fig.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "SinusAnomaly" / "Resources" / "Screenshots")
    # The random bundle's probabilities sit near its 0.5 threshold; with seed 1 both sides come out
    # "anomalous", so the label map is visible in the pictures (seeds 2 and 3 give two "normal" sides).
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic head and the random weights (default 1)")
    parser.add_argument("--work", type=Path, default=None, help="keep the head, bundle and classify output here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        image, result_dir = make_classify_output(work, args.seed)
        result = read_result(result_dir)
        render_slices(image, result_dir, result, args.out / "SinusAnomaly-slices.png")
        render_results(result, args.out / "SinusAnomaly-results.png")
    print(f"wrote {args.out / 'SinusAnomaly-slices.png'} and {args.out / 'SinusAnomaly-results.png'}")


if __name__ == "__main__":
    main()
