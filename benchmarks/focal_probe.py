"""Probe of what lets a network see focal lesions on anatomy it never saw (issue 30, item 3).

A quicker, simpler harness than the leave-one-anatomy-out check (``loao.py``), on the same work
folder: for one held-out anatomy it trains ONE network on fold 0's training sinuses of the
split without that anatomy (or on every non-test sinus, ``--all-folds``), keeps its last epoch,
and scores every sinus of the held-out anatomy's pool and of its focal test pool where ``loao.py``
made one (AUROC overall and per lesion type against the normal sinuses). It measures two ideas:

* **classifier** (``--epochs N``): fine-tuning as the recipe does (AdamW 1e-3, class-weighted
  cross-entropy, the recipe's augmentation), with focal lesions painted into a share ``--paint``
  of the normal crops (:mod:`SinusAnomalyTraining.focal_lesions`), a constant learning rate or
  one cycle (``--one-cycle``). ``painted`` is the AUROC of the held-out normal crops with a lesion
  painted in, against the same crops as they are: does the network see a lesion it was shown?
* **lesion segmentation** (``--segment-epochs N``): the U-Net of residual pretraining trained,
  without any label, to segment lesions painted into 70 % of the training normals (BCE, positive
  weight 10, the recipe's augmentation on image and mask together); a sinus's score is the mean of
  its 50 most lesion-like voxels (``seg_top50``; also the maximum and the sum).

* **classifier with a lesion-segmentation task** (``--true-masks W``): the recipe's classifier and
  the U-Net's decoder share one encoder; besides the class loss the decoder learns the sinus's
  true lesion mask (synth's ``masks/``, resampled onto the crop, empty for normal sinuses; BCE,
  weight ``W``). Scored by its class probability, as the recipe's classifier is.

* **both sinuses of the head** (``--bilateral``): the classifier sees the sinus and, as a second
  channel, the head's other sinus (mirrored like every right crop, so both lie the same way; the
  sinus itself where the other one was not extracted): a reference of the same anatomy and scan.

Results are appended as JSON lines to ``--out``; ``--summarise FILE`` prints mean ± SD per variant.

    python benchmarks/focal_probe.py --work /work/loao --held-out colin27 --seed 0 --epochs 60 --paint 0.5 --out probe.jsonl
    python benchmarks/focal_probe.py --work /work/loao --held-out colin27 --seed 0 --epochs 0 --segment-epochs 30 --out probe.jsonl
    python benchmarks/focal_probe.py --summarise probe.jsonl
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "SinusAnomaly")]

from SinusAnomalyLib.dataset import load_dataset  # noqa: E402
from SinusAnomalyLib.models import SinusClassifier, parameter_groups  # noqa: E402
from SinusAnomalyLib.residuals import resize_crops  # noqa: E402
from SinusAnomalyTraining.defaultmodel import anatomy_of  # noqa: E402
from SinusAnomalyTraining.evaluation import best_youden_threshold, binary_metrics  # noqa: E402
from SinusAnomalyTraining.localisation import lesion_masks_in_crops  # noqa: E402
from SinusAnomalyTraining.augment import augment_batch  # noqa: E402
from SinusAnomalyTraining.config import FocalLesionSettings, load_config  # noqa: E402
from SinusAnomalyTraining.focal_lesions import find_cavity, paint_lesion  # noqa: E402
from SinusAnomalyTraining.stagerunner import network_spec  # noqa: E402
from SinusAnomalyTraining.stages import class_weights  # noqa: E402

BATCH = 16
LESIONS = FocalLesionSettings(1.0, (4.0, 24.0), (0.25, 1.0))


def type_aurocs(types: np.ndarray, scores: np.ndarray, prefix: str = "") -> dict:
    """AUROC of every sinus, and of each lesion type against the normal sinuses."""
    anomalous = types != "normal"
    out = {f"{prefix}all": roc_auc_score(anomalous, scores)}
    for kind in sorted(set(types) - {"normal"}):
        chosen = (types == "normal") | (types == kind)
        out[f"{prefix}{kind}"] = roc_auc_score(anomalous[chosen], scores[chosen])
    return out


def at_threshold(types: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Specificity and sensitivity on the held-out sinuses at a threshold chosen on the training anatomies."""
    m = binary_metrics((types != "normal").astype(int), scores, threshold)
    return {"threshold": float(threshold), "specificity": m["specificity"], "sensitivity": m["recall"]}


def pooled_sinuses(work: Path, folder: str):
    """A folder of ``loao.py`` (``all``, ``focal``, ``focal-train``): its prepared dataset and, for each manifest
    row, that sinus's row of ``sinuses.csv`` (anatomy, contrast, anomaly type, ...)."""
    dataset = load_dataset(work / folder / "dataset")
    with open(work / folder / "sinuses.csv", newline="", encoding="utf-8") as fh:
        info = {r["patient"] + r["side"]: r for r in csv.DictReader(fh)}
    return dataset, [info[r.patient + r.side] for r in dataset.manifest]


def other_sides(dataset, rows) -> list[int]:
    """For each manifest index of ``rows``, the index of the same head's other sinus (itself where it was not extracted)."""
    index = {(r.patient, r.side): i for i, r in enumerate(dataset.manifest)}
    flip = {"left": "right", "right": "left"}
    return [index.get((dataset.manifest[i].patient, flip[dataset.manifest[i].side]), i) for i in rows]


def crops_of(dataset, rows, size: int, bilateral: bool) -> torch.Tensor:
    """``(n, C, size, size, size)`` crops of manifest ``rows``; C = 2 with the other sinus as the second channel."""
    x = torch.from_numpy(resize_crops(dataset.crops[rows], size)).float()[:, None]
    if bilateral:
        x = torch.cat([x, torch.from_numpy(resize_crops(dataset.crops[other_sides(dataset, rows)], size)).float()[:, None]], 1)
    return x


def held_out_sinuses(work: Path, anatomy: str, size: int, bilateral: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """``(n, C, size, size, size)`` crops and (n,) lesion types of every sinus of ``anatomy``'s pool and,
    where ``loao.py`` made it (``work/focal``), of its focal test pool (C: see :func:`crops_of`)."""
    crops, types = [], []
    for folder in ("all", "focal"):
        if not (work / folder / "dataset" / "dataset.json").is_file():
            continue
        dataset, sinuses = pooled_sinuses(work, folder)
        rows = [i for i, sinus in enumerate(sinuses) if sinus["anatomy"] == anatomy]
        crops.append(crops_of(dataset, rows, size, bilateral))
        types += [sinuses[i]["anomaly_type"] for i in rows]
    return torch.cat(crops), np.array(types)


def true_masks(work: Path, dataset, folder: str, size: int) -> np.ndarray:
    """``(n, size, size, size)`` lesion fraction of every manifest row of ``dataset`` (zeros for
    normal sinuses), from the synth masks of the pools in ``work/<folder>`` (``pools`` or
    ``focal-train-pools``); cached in ``work/<folder>-masks-<size>.npz`` by sample id."""
    cache = work / f"{folder}-masks-{size}.npz"
    stored = dict(np.load(cache)) if cache.is_file() else {}
    missing = [r for r in dataset.manifest if r.label == 1 and r.sample_id not in stored]
    for anatomy in sorted({anatomy_of(r.patient) for r in missing}):
        in_pool = lambda name, anatomy=anatomy: name.split("-", 1)[1] if anatomy_of(name) == anatomy else None  # noqa: E731
        for sid, fraction in lesion_masks_in_crops(work / folder / anatomy, dataset, size, in_pool).items():
            stored[sid] = fraction.astype(np.float16)
    if missing:
        np.savez(cache, **stored)
    return np.stack([stored.get(r.sample_id, np.zeros((size,) * 3, np.float16)) for r in dataset.manifest])


def train_multitask(spec, cfg, x_train, y_train, m_train, epochs: int, weight: float):
    """Classifier and U-Net decoder on one encoder: class cross-entropy + ``weight`` x lesion BCE."""
    unet, model = spec.unet(), spec.classifier()
    model.encoder = unet.encoder
    params = {id(p): p for p in [*model.parameters(), *unet.parameters()]}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-3, weight_decay=0.01)
    weights = class_weights(y_train)
    for _ in range(epochs):
        model.train(), unet.train()
        order = torch.randperm(len(x_train))
        for b in range(len(x_train) // BATCH):
            rows = order[b * BATCH:(b + 1) * BATCH].numpy()
            both = augment_batch(torch.cat([x_train[rows], m_train[rows]], 1), cfg.finetune.augment)
            features = unet.encoder(both[:, :1])
            logits = model.head(model.pool(features[-1]))
            seg = unet.segmentation_head(unet.decoder(features, len(features) - 1))
            loss = (F.cross_entropy(logits, torch.from_numpy(y_train[rows].copy()), weight=weights)
                    + weight * F.binary_cross_entropy_with_logits(seg, (both[:, 1:] > 0.5).float(), pos_weight=torch.tensor(10.0)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), unet.eval()


def train_segmenter(spec, cfg, x_train, cavities, rng, epochs: int):
    """The U-Net trained to segment lesions painted into the normal crops (``cavities`` not None)."""
    unet = spec.unet()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-4)
    normals = np.flatnonzero([c is not None for c in cavities])
    for _ in range(epochs):
        unet.train()
        order = rng.permutation(normals)
        for b in range(len(order) // BATCH):
            rows = order[b * BATCH:(b + 1) * BATCH]
            x, mask = x_train[rows].clone(), torch.zeros((len(rows), *x_train.shape[1:]))
            for k, i in enumerate(rows):
                if rng.random() < 0.7:
                    painted, lesion = paint_lesion(x[k, 0].numpy(), cavities[i], rng, LESIONS)
                    x[k, 0], mask[k, 0] = torch.from_numpy(painted), torch.from_numpy(lesion.astype(np.float32))
            both = augment_batch(torch.cat([x, mask], 1), cfg.finetune.augment)
            loss = F.binary_cross_entropy_with_logits(unet(both[:, :1]), (both[:, 1:] > 0.5).float(), pos_weight=torch.tensor(10.0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return unet.eval()


def segmentation_scores(unet, x_test) -> dict:
    with torch.no_grad():
        maps = torch.cat([torch.sigmoid(unet(x_test[s:s + BATCH])) for s in range(0, len(x_test), BATCH)]).flatten(1).numpy()
    return {"max": maps.max(1), "top50": np.sort(maps, 1)[:, -50:].mean(1), "sum": maps.sum(1)}


def train_classifier(model, cfg, x_train, y_train, cavities, rng, epochs: int, paint: float, one_cycle: bool):
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-3)
    steps = epochs * (len(x_train) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1) if one_cycle else None
    weights = class_weights(y_train)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for b in range(len(x_train) // BATCH):
            rows = order[b * BATCH:(b + 1) * BATCH].numpy()
            x, y = x_train[rows].clone(), torch.from_numpy(y_train[rows].copy())
            for k, i in enumerate(rows):
                if paint > 0 and y_train[i] == 0 and cavities[i] is not None and rng.random() < paint:
                    painted, lesion = paint_lesion(x[k, 0].numpy(), cavities[i], rng, LESIONS)
                    if lesion.any():
                        x[k, 0], y[k] = torch.from_numpy(painted), 1
            loss = F.cross_entropy(model(augment_batch(x, cfg.finetune.augment, image_channels=x.shape[1])), y, weight=weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
    return model.eval()


def probabilities(model, x) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([torch.softmax(model(x[s:s + 32]), 1)[:, 1] for s in range(0, len(x), 32)]).numpy()


def painted_auroc(model, x_test: torch.Tensor, types: np.ndarray, p: np.ndarray, rng) -> float:
    """AUROC of the held-out normal crops with a lesion painted in (the other sinus, if shown, as it is)
    against the same crops as they are (``p``: the model's probabilities on ``x_test``)."""
    normals = np.flatnonzero(types == "normal")
    painted = []
    for k in normals:
        if (cavity := find_cavity(x_test[k, 0].numpy())) is not None:
            x = x_test[k].clone()
            x[0] = torch.from_numpy(paint_lesion(x[0].numpy(), cavity, rng, LESIONS)[0])
            painted.append(x)
    pp = probabilities(model, torch.stack(painted))
    return roc_auc_score(np.r_[np.zeros(len(normals)), np.ones(len(pp))], np.r_[p[normals], pp])


def probe(args) -> dict:
    torch.set_num_threads(1)
    cfg = load_config("default")
    size = args.crop_size or cfg.crop_size  # the networks are the recipe's; only the crops they see change
    split = load_dataset(args.work / f"without-{args.held_out}" / "dataset")
    test = set(split.splits.test)
    fold0 = set(split.splits.folds[0].train)
    train_idx = np.array([i for i, r in enumerate(split.manifest) if r.patient not in test and (args.all_folds or r.patient in fold0)])
    x_train = crops_of(split, train_idx, size, args.bilateral)
    y_train = np.array([split.manifest[i].label for i in train_idx])
    if args.true_masks:
        m_train = torch.from_numpy(true_masks(args.work, split, "pools", size)[train_idx]).float()[:, None]
    if args.extra_train:  # more polyps and cysts to learn from: the focal training pools of the other anatomies
        extra, sinuses = pooled_sinuses(args.work, "focal-train")
        half = set(extra.splits.folds[0].train)
        rows = [i for i, r in enumerate(extra.manifest)
                if sinuses[i]["anatomy"] != args.held_out and (args.all_folds or r.patient in half)]
        x_train = torch.cat([x_train, crops_of(extra, rows, size, args.bilateral)])
        y_train = np.r_[y_train, [extra.manifest[i].label for i in rows]]
        if args.true_masks:
            m_extra = torch.from_numpy(true_masks(args.work, extra, "focal-train-pools", size)[rows]).float()[:, None]
            m_train = torch.cat([m_train, m_extra])
    x_test, types = held_out_sinuses(args.work, args.held_out, size, args.bilateral)

    rng = np.random.default_rng(args.seed)
    cavities = [find_cavity(x_train[i, 0].numpy()) if y_train[i] == 0 else None for i in range(len(x_train))]
    spec = network_spec(cfg)
    torch.manual_seed(args.seed)
    model = SinusClassifier(in_channels=2, encoder_widths=spec.encoder_widths) if args.bilateral else spec.classifier()
    result = {"held": args.held_out, "seed": args.seed, "epochs": args.epochs, "paint": args.paint, "all_folds": args.all_folds,
              "one_cycle": args.one_cycle, "segment_epochs": args.segment_epochs, "train_sinuses": len(x_train), "crop_size": size,
              "focal_pool": (args.work / "focal" / "dataset" / "dataset.json").is_file(), "test_sinuses": len(x_test),
              "extra_train": args.extra_train, "true_masks": args.true_masks, "bilateral": args.bilateral}
    if args.segment_epochs:
        unet = train_segmenter(spec, cfg, x_train, cavities, rng, args.segment_epochs)
        for name, scores in segmentation_scores(unet, x_test).items():
            result.update(type_aurocs(types, scores, f"seg_{name}:"))
    if args.epochs:
        if args.true_masks:
            model, unet = train_multitask(spec, cfg, x_train, y_train, m_train, args.epochs, args.true_masks)
        else:
            model = train_classifier(model, cfg, x_train, y_train, cavities, rng, args.epochs, args.paint, args.one_cycle)
        p = probabilities(model, x_test)
        result.update(type_aurocs(types, p))
        if not args.all_folds:  # fold 0's validation sinuses are then unseen: the threshold as the recipe picks it
            val_idx = np.array([i for i, r in enumerate(split.manifest) if r.patient in set(split.splits.folds[0].val)])
            y_val = np.array([split.manifest[i].label for i in val_idx])
            threshold = best_youden_threshold(y_val, probabilities(model, crops_of(split, val_idx, size, args.bilateral)))
            result.update(at_threshold(types, p, threshold))
        if args.true_masks:
            for name, scores in segmentation_scores(unet, x_test).items():
                result.update(type_aurocs(types, scores, f"seg_{name}:"))
        else:
            result["painted"] = painted_auroc(model, x_test, types, p, rng)
    return result


def variant(r: dict) -> str:
    tested = ", pool + focal pool" if r.get("focal_pool") else ""
    if not r["epochs"]:
        return f"lesion segmentation, {r['segment_epochs']} epochs{tested}"
    size = f", {r['crop_size']}^3" if r.get("crop_size", 32) != 32 else ""
    return (f"classifier {r['epochs']} epochs{size}, {'every non-test sinus' if r['all_folds'] else 'fold 0'}, "
            f"{'one cycle' if r['one_cycle'] else 'constant lr'}, paint {r['paint']}"
            f"{', + focal training pools' if r.get('extra_train') else ''}"
            f"{f', + true lesion masks (weight {w:g})' if (w := r.get('true_masks')) else ''}"
            f"{', both sinuses of the head' if r.get('bilateral') else ''}{tested}")


def summarise(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = ["all", "polyp", "retention_cyst", "mucosal_thickening", "air_fluid_level", "fully_occupied", "painted",
            "specificity", "sensitivity"]
    lines = ["| variant | runs | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name in sorted({variant(r) for r in rows}):
        group = [r for r in rows if variant(r) == name]
        prefix = "seg_top50:" if name.startswith("lesion") else ""
        cells = []
        for k in keys:
            values = [r[prefix + k] for r in group if prefix + k in r]
            cells.append(f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else "-")
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--held-out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60, help="classifier epochs (0: none)")
    parser.add_argument("--paint", type=float, default=0.0, help="share of normal crops painted while the classifier trains")
    parser.add_argument("--all-folds", action="store_true", help="train on every non-test sinus instead of fold 0's")
    parser.add_argument("--one-cycle", action="store_true", help="one-cycle learning rate instead of a constant one")
    parser.add_argument("--crop-size", type=int, default=0, help="crop size the networks see (default: the recipe's, 32; or 64)")
    parser.add_argument("--extra-train", action="store_true", help="also train on the other anatomies' focal training pools "
                                                                   "(work/focal-train, made by loao.py --focal-train-heads 48)")
    parser.add_argument("--true-masks", type=float, default=0.0, help="weight of a lesion-segmentation loss on the synth "
                                                                      "lesion masks, trained with the classifier (0: none)")
    parser.add_argument("--bilateral", action="store_true", help="the head's other sinus as the classifier's second channel")
    parser.add_argument("--segment-epochs", type=int, default=0, help="train the lesion-segmentation U-Net this long (0: not)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summarise", type=Path)
    args = parser.parse_args()
    if args.summarise:
        print(summarise(args.summarise))
        return
    result = probe(args)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
    with open(args.out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
