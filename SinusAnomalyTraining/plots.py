"""Every figure of the project (matplotlib, Agg backend, written atomically as PNG).

matplotlib is imported on first use: plotting is optional work and slow to import.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from SinusAnomalyLib.fileio import atomic_path
from SinusAnomalyLib.residuals import resize_crops

from .evaluation import binary_metrics, check_pair


def _pyplot():
    import matplotlib  # noqa: PLC0415  (imported on demand: plotting is optional work)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save_crop_preview(arrays: dict, path: str | Path, title: str = "") -> Path:
    """Three orthogonal mid-slices of each crop (arrays indexed [i, j, k] along RAS axes)."""
    plt = _pyplot()
    sides = list(arrays)
    fig, axes = plt.subplots(len(sides), 3, figsize=(9, 3 * len(sides)), squeeze=False)
    for row, side in enumerate(sides):
        vol = np.asarray(arrays[side], dtype=np.float32)
        c = [s // 2 for s in vol.shape]
        views = (("axial", vol[:, :, c[2]].T), ("coronal", vol[:, c[1], :].T), ("sagittal", vol[c[0], :, :].T))
        for col, (name, plane) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(plane, cmap="gray", origin="lower", vmin=0, vmax=1)
            ax.set_title(f"{side} ({'mirrored ' if side == 'right' else ''}{name})", fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)


def plot_roc_pr(curves: Mapping[str, tuple], path: str | Path, title: str = "") -> Path:
    """ROC (left) and precision-recall (right) curves, one line per entry, saved as PNG atomically.

    Args:
        curves: ``{label: (y_true, p_anomalous)}`` with ``(n,)`` arrays each, e.g. one entry per
            fold or per pre-training method. The legend shows AUROC / AUPRC per entry; entries with
            one class only cannot be drawn and are listed as such in the legend.
        path: output ``.png`` file (parent folders are created).
        title: optional figure title.

    Chance lines: the diagonal on the ROC panel; on the PR panel a horizontal line at the
    prevalence of anomalous samples (of all entries pooled), the precision of a random classifier.

    Returns:
        ``Path(path)``.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: PLC0415

    plt = _pyplot()
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(11, 5))
    colours = plt.get_cmap("tab10")
    n_pos = n_all = 0
    for i, (label, (y_true, p)) in enumerate(curves.items()):
        y, s = check_pair(y_true, p)
        colour = colours(i % 10)
        if y.min() == y.max():
            for ax in (ax_roc, ax_pr):
                ax.plot([], [], color=colour, label=f"{label} (one class only, not drawn)")
            continue
        n_pos += int(y.sum())
        n_all += y.size
        m = binary_metrics(y, s)
        fpr, tpr, _ = roc_curve(y, s)
        ax_roc.plot(fpr, tpr, color=colour, lw=1.8, label=f"{label}: AUROC {m['auroc']:.3f}")
        prec, rec, _ = precision_recall_curve(y, s)
        ax_pr.plot(rec, prec, color=colour, lw=1.8, drawstyle="steps-post", label=f"{label}: AUPRC {m['auprc']:.3f}")
    ax_roc.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
    if n_all:
        prevalence = n_pos / n_all
        ax_pr.axhline(prevalence, color="grey", ls="--", lw=1, label=f"chance (prevalence {prevalence:.2f})")
    ax_roc.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
               title="ROC", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall",
              xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8, framealpha=0.9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def plot_vs_fraction(table: list[dict], titles: Mapping[str, str], path: Path) -> Path:
    """AUPRC (left) and AUROC (right) against the label fraction, one line per method (Figure 3's form).

    ``table``: rows of :func:`SinusAnomalyTraining.report.evaluate_run` (``method``, ``fraction``,
    ``auroc`` / ``auprc`` summaries ``{"mean", "low", "high"}``); ``titles``: legend name per method.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in ((axes[0], "auprc", "AUPRC"), (axes[1], "auroc", "AUROC")):
        for method in dict.fromkeys(r["method"] for r in table):
            rows = sorted((r for r in table if r["method"] == method), key=lambda r: float(r["fraction"]))
            x = [float(r["fraction"]) for r in rows]
            mean = np.array([(r[metric] or {}).get("mean", np.nan) for r in rows], dtype=float)
            low = np.array([max((r[metric] or {}).get("low", np.nan), 0.0) for r in rows], dtype=float)
            high = np.array([min((r[metric] or {}).get("high", np.nan), 1.0) for r in rows], dtype=float)
            line, = ax.plot(x, mean, marker="o", label=titles.get(method, method))
            if np.isfinite(low).any():
                ax.fill_between(x, np.nan_to_num(low, nan=mean), np.nan_to_num(high, nan=mean), alpha=0.06, color=line.get_color())
        ax.set_xlabel("labelled training sinuses (%)")
        ax.set_ylabel(title)
        ax.set_title(f"{title} vs label fraction (mean over folds, 95 % interval)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def save_residual_examples(dataset, residuals: dict, masks: dict, crop_size: int, path: Path, n: int = 4) -> Path:
    """Mid-slices of a few anomalous test crops: image, CAE residual, true lesion."""
    plt = _pyplot()
    test = set(dataset.splits.test)
    rows = [r for r in dataset.manifest if r.label == 1 and r.patient in test and r.sample_id in masks][:n]
    if not rows:
        return path
    fig, axes = plt.subplots(len(rows), 3, figsize=(7, 2.3 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        image = resize_crops(dataset.crops[row.crop_index:row.crop_index + 1], crop_size)[0]
        mask = masks[row.sample_id]
        k = int(np.argmax(mask.sum(axis=(0, 1)))) if mask.any() else crop_size // 2  # slice with most lesion
        for j, (title, vol, cmap) in enumerate((("image", image, "gray"), ("CAE residual", residuals[row.sample_id], "hot"),
                                                ("true lesion", mask, "gray"))):
            axes[i, j].imshow(np.asarray(vol, dtype=np.float32)[:, :, k].T, origin="lower", cmap=cmap, vmin=0, vmax=1)
            axes[i, j].set_title(f"{row.sample_id}: {title}" if j == 0 else title, fontsize=7)
            axes[i, j].axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def plot_pretraining_losses(entries: list[dict], path: Path) -> Path:
    """Each pretraining method's loss per epoch (left) and, where the loss has a floor, the excess over it (right).

    ``entries``: :func:`SinusAnomalyTraining.report.pretraining_losses` (one per method and fold, ``rows`` of
    ``epoch``, ``train_loss``, ``val_loss``, ``train_floor``, ``train_excess``, ... with ``None`` where missing).
    One row of panels per method, one colour per fold; training solid, validation dashed, the floor (the soft
    targets' mean binary entropy, residual pretraining only) dotted. Histories without a floor (other losses,
    or written before it was recorded) get a note instead of the excess panel.
    """
    plt = _pyplot()
    methods = list(dict.fromkeys(e["method"] for e in entries))
    fig, axes = plt.subplots(max(len(methods), 1), 2, figsize=(11, 3.2 * max(len(methods), 1)), squeeze=False)
    colours = plt.get_cmap("tab10")

    def series(rows, key):
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=float)

    for i, method in enumerate(methods):
        ax_loss, ax_excess = axes[i]
        chosen = [e for e in entries if e["method"] == method]
        floored = any(e["has_floor"] for e in chosen)
        for e in chosen:
            rows, colour = e["rows"], colours(int(e["fold"]) % 10)
            x = [r["epoch"] for r in rows]
            ax_loss.plot(x, series(rows, "train_loss"), color=colour, lw=1.4, label=f"fold {e['fold']} train")
            ax_loss.plot(x, series(rows, "val_loss"), color=colour, lw=1.4, ls="--", label=f"fold {e['fold']} val")
            if e["has_floor"]:
                ax_loss.plot(x, series(rows, "train_floor"), color=colour, lw=1, ls=":")
                ax_loss.plot(x, series(rows, "val_floor"), color=colour, lw=1, ls="-.")
                ax_excess.plot(x, series(rows, "train_excess"), color=colour, lw=1.4, label=f"fold {e['fold']} train")
                ax_excess.plot(x, series(rows, "val_excess"), color=colour, lw=1.4, ls="--", label=f"fold {e['fold']} val")
        ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{method}: loss" + (" (floor: dotted train, dash-dot val)" if floored else ""))
        ax_loss.grid(alpha=0.3)
        ax_loss.legend(fontsize=6, ncol=2)
        if floored:
            ax_excess.axhline(0.0, color="grey", lw=1)
            ax_excess.set(xlabel="epoch", ylabel="loss - floor", title=f"{method}: excess over the targets' entropy")
            ax_excess.grid(alpha=0.3)
            ax_excess.legend(fontsize=6, ncol=2)
        else:
            note = ("no floor recorded (a history written before it was)" if method.startswith("residual")
                    else "no floor: not a soft-target cross-entropy")
            ax_excess.text(0.5, 0.5, note, ha="center", va="center", fontsize=9, transform=ax_excess.transAxes)
            ax_excess.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)
