"""The method's stages for one fold: CAE, residuals, residual pretraining, fine-tuning.

Run directory layout (``RUN``)::

    RUN/config.json                         the resolved configuration of the run
    RUN/fold<k>/cae/                        last.pt, best.pt, history.*, train.log, done.json
    RUN/fold<k>/residuals/                  residuals.npy (N + M, S, S, S) float16 (labelled, then unlabelled crops), residuals.json
                                            (sample ids, what they were made from, the scale: per crop or the cohort's low/high)
    RUN/fold<k>/pretrain/                   last.pt, best.pt, history.*, train.log, done.json
    RUN/fold<k>/pretrain_<method>/          the same, for a baseline's pretraining (ae, dae, simclr, byol, simsiam, spark)
    RUN/fold<k>/finetune/<method>/frac<p>/  best.pt, ..., predictions.csv, done.json

Each stage writes ``done.json`` last, recording what it was made from (checksums of its inputs,
its settings); a stage whose ``done.json`` matches is skipped, an interrupted one continues from
its ``last.pt`` (``FoldContext.restart`` starts it over), one whose inputs changed starts over, and
a missing input is an error that says which stage to run (that bookkeeping, :class:`FoldContext` and the
training skeleton every stage runs on are in :mod:`.stagerunner`; callers may keep using ``stages.FoldContext``,
``stages.network_spec``, ``stages.classifier_shortcut``, ``stages.DONE``). Pretraining learns from the dataset's
unlabelled set when it has one (:func:`pretraining_data`). One CAE per fold, trained on that fold's training normals only:
a CAE shared by folds would have seen other folds' validation sinuses.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from SinusAnomalyLib.errors import DatasetError, SinusAnomalyError, StageInputError
from SinusAnomalyLib.fileio import atomic_path, sha256_file, write_csv_atomic, write_json_atomic
from SinusAnomalyLib.models import ConvAutoencoder, SinusClassifier, parameter_groups
from SinusAnomalyLib.residuals import cohort_scale, residual_maps, resize_crops

from . import runtime
from .data import CropLoader, SinusCrops
from .config import METHODS, PRETEXT, PRETRAINING, percent_key
from .engine import FLOOR, Checkpointer, load_checkpoint
from .focal_lesions import FocalLesionPainter
from .optim import WarmupCosine, lars_with_warmup_cosine
from .pretext import PRETEXT_METHODS, TwoViewPretext, build_pretext, load_medicalnet_encoder
from .pretext.losses import target_entropy
from .stagerunner import DONE  # noqa: F401  (re-exported: callers read stages.DONE, stages.FoldContext, stages.network_spec)
from .stagerunner import (FoldContext, Training, _done, _finished, _image_batch, _mark_done, _require, classifier_shortcut,
                          network_spec, run_training_stage)


# --------------------------------------------------------------------------- 1. CAE

def cae_training_rows(ctx: FoldContext) -> list[int]:
    """Manifest rows of the normal training sinuses the fold's CAE learns from (``ctx.cae_fraction`` % of
    them: fixed nested subsets, one seeded order, a prefix per fraction); their residuals also give the
    cohort scale (:func:`cohort_scale_of`)."""
    labels = ctx.dataset.labels()
    train = [int(i) for i in ctx.indices("train") if labels[i] == 0]
    if float(ctx.cae_fraction) < 100:
        order = np.random.default_rng([ctx.config.seed, ctx.fold, 7]).permutation(len(train))
        train = sorted(np.asarray(train)[order[: max(1, round(len(train) * float(ctx.cae_fraction) / 100.0))]].tolist())
    return train


def train_cae(ctx: FoldContext) -> Path:
    """Train the fold's CAE on the normal sinuses of its training patients (L1, Adam, no augmentation).

    Returns the path of the best checkpoint (lowest L1 on the validation patients' normals).
    """
    stage_dir = ctx.cae_dir
    cfg = ctx.config.cae
    made_from = {"dataset": ctx.dataset_fingerprint, "fold": ctx.fold, "crop_size": ctx.config.cae_size, "cae": cfg.as_dict(),
                 "seed": ctx.config.seed, "cae_fraction": ctx.cae_fraction}

    def build() -> Training:
        train = cae_training_rows(ctx)
        labels = ctx.dataset.labels()
        val = [i for i in ctx.indices("val") if labels[i] == 0]
        if not train:
            raise DatasetError(f"fold {ctx.fold} has no normal training sinus to train the CAE on")
        size, batch = ctx.config.cae_size, runtime.per_process_batch(cfg.batch_size)
        train_loader = CropLoader(SinusCrops.from_dataset(ctx.dataset, train, size), batch, True, ctx.config.seed, ctx.device)
        val_loader = CropLoader(SinusCrops.from_dataset(ctx.dataset, val, size), batch, False, ctx.config.seed,
                                ctx.device) if val else None
        runtime.seed_everything(ctx.config.seed, ctx.config.deterministic)
        model = network_spec(ctx.config).cae().to(ctx.device)

        def l1_step(net, batch, device):
            x = _image_batch(batch, device)
            return F.l1_loss(net(x), x)

        return Training(f"CAE fold {ctx.fold}: {len(train)} normal training sinuses, {len(val)} normal validation sinuses, "
                        f"{runtime.describe_batch(batch)}",
                        model, train_loader, val_loader, l1_step, cfg.epochs,
                        torch.optim.Adam(model.parameters(), lr=cfg.lr), amp=False,  # float32: its residuals are 0.01-0.05,
                        # finer than bf16's steps of 0.004 near 1
                        extra={"model": "ConvAutoencoder", "config": cfg.as_dict()}, done={"n_train": len(train), "n_val": len(val)})

    run_training_stage(ctx, stage_dir, made_from, build)
    return stage_dir / Checkpointer.BEST


def load_cae(ctx: FoldContext) -> tuple[ConvAutoencoder, str]:
    """The fold's trained CAE (eval mode) and the checksum of its checkpoint."""
    path = _require(ctx.cae_dir / Checkpointer.BEST, "train-cae", ctx.fold_dir)
    model = network_spec(ctx.config).cae()
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.to(ctx.device).eval(), sha256_file(path)


# --------------------------------------------------------------------------- 2. residuals

def compute_residuals(ctx: FoldContext) -> Path:
    """Residual targets of every crop of the dataset, labelled and unlabelled, with the fold's CAE;
    cached with its identity and the crops' (and the unlabelled set's: another set makes them stale)."""
    stage_dir = ctx.residuals_dir
    cfg = ctx.config.residuals
    cae, cae_sha = load_cae(ctx)
    made_from = {"cae_sha256": cae_sha, "residuals": cfg.as_dict(), "crop_size": ctx.config.crop_size, "dataset": ctx.dataset_fingerprint}
    if ctx.unlabelled_fingerprint is not None:  # only then, so residuals of a dataset without one stay valid
        made_from["unlabelled"] = ctx.unlabelled_fingerprint
    if not ctx.restart and _finished(stage_dir, made_from):
        return stage_dir / "residuals.npy"
    scale = cohort_scale_of(ctx, cae) if cfg.scaling == "cohort" else {"scaling": "per_crop", "percentiles": list(cfg.percentiles)}
    fixed = (scale["low"], scale["high"]) if cfg.scaling == "cohort" else None
    sources = [ctx.dataset, ctx.dataset.unlabelled]  # each with .manifest and .crops (row i = manifest[i])
    sample_ids = [r.sample_id for source in sources for r in source.manifest]
    size = ctx.config.crop_size
    main, ws, batch = runtime.is_main_process(), runtime.world_size(), cfg.batch_size
    out = np.zeros((len(sample_ids), size, size, size), dtype=np.float16) if main else None
    from tqdm.auto import tqdm  # noqa: PLC0415

    batches = [(source, start) for source in sources for start in range(0, len(source.manifest), batch)]
    bar = tqdm(total=len(batches), desc=f"residuals fold {ctx.fold}", disable=not (ctx.progress and main), unit="batch")
    row = 0  # under DDP each process makes every ws-th batch; all_gather returns a round's batches in order
    for first in range(0, len(batches), ws):
        maps = torch.zeros((0, size, size, size))
        if first + runtime.rank() < len(batches):
            source, start = batches[first + runtime.rank()]
            images = torch.from_numpy(resize_crops(source.crops[start:start + batch], size))[:, None].to(ctx.device)
            maps = residual_maps(cae, images, cfg.percentiles, cfg.median_kernel, fixed)[:, 0].float().cpu()
        maps = runtime.all_gather_tensor(maps)
        if main:
            out[row:row + len(maps)] = maps.numpy()
        row += len(maps)
        bar.update(min(ws, len(batches) - first))
    bar.close()
    if main:
        with atomic_path(stage_dir / "residuals.npy") as tmp:
            np.save(tmp, out)
        write_json_atomic(stage_dir / "residuals.json", {"sample_ids": sample_ids, **made_from, "scale": scale})
    runtime.barrier()
    _mark_done(stage_dir, made_from, residuals_sha256=sha256_file(stage_dir / "residuals.npy"), scale=scale)
    runtime.barrier()  # pretraining reads done.json next, on every rank
    return stage_dir / "residuals.npy"


def cohort_scale_of(ctx: FoldContext, cae: ConvAutoencoder) -> dict:
    """The cohort scale of the fold's residual targets (``residuals.scaling`` "cohort"): the configured
    percentiles of the raw residuals |x - CAE(x)| of the normal training sinuses the CAE learnt from
    (:func:`cae_training_rows`), pooled over all their voxels; what ``residuals.json`` records.

    Every process computes it from the same crops; the mean over the processes makes it identical on all.
    """
    cfg, size = ctx.config.residuals, ctx.config.crop_size
    rows = np.asarray(cae_training_rows(ctx), dtype=np.int64)
    if not len(rows):
        raise DatasetError(f"fold {ctx.fold} has no normal training sinus to take the cohort scale of the residuals from")
    raw = []
    for start in range(0, len(rows), cfg.batch_size):
        images = torch.from_numpy(resize_crops(ctx.dataset.crops[rows[start:start + cfg.batch_size]], size))[:, None].to(ctx.device)
        with torch.no_grad():
            raw.append((images - cae(images)).abs()[:, 0].float().cpu().numpy())
    low, high = cohort_scale(np.concatenate(raw), cfg.percentiles)
    low, high = (float(v) for v in runtime.reduce_mean(torch.tensor([low, high], dtype=torch.float64)))
    return {"scaling": "cohort", "percentiles": list(cfg.percentiles), "low": low, "high": high,
            "from": f"raw residuals of the {len(rows)} normal training sinuses fold {ctx.fold}'s CAE learnt from, "
                    "pooled over their voxels", "n_crops": len(rows)}


def load_residuals(ctx: FoldContext) -> dict:
    """``{sample_id: (S, S, S) residual}`` of the fold, refusing residuals of another CAE or unlabelled set."""
    stage_dir = ctx.residuals_dir
    npy = _require(stage_dir / "residuals.npy", "residuals", ctx.fold_dir)
    meta = json.loads(_require(stage_dir / "residuals.json", "residuals", ctx.fold_dir).read_text(encoding="utf-8"))
    cae_path = _require(ctx.cae_dir / Checkpointer.BEST, "train-cae", ctx.fold_dir)
    if meta.get("cae_sha256") != sha256_file(cae_path):
        raise StageInputError(
            f"{npy} was made by a different CAE than {cae_path} (stale): re-run the 'residuals' stage for {ctx.fold_dir.name}"
        )
    if meta.get("unlabelled") != ctx.unlabelled_fingerprint:
        raise StageInputError(f"{npy} was made for another unlabelled set than the dataset's (stale): "
                              f"re-run the 'residuals' stage for {ctx.fold_dir.name}")
    if meta.get("crop_size") != ctx.config.crop_size:
        raise StageInputError(f"{npy} has crop size {meta.get('crop_size')}, the run uses {ctx.config.crop_size}: re-run 'residuals'")
    array = np.load(npy, mmap_mode="r")
    if len(meta["sample_ids"]) != len(array):
        raise StageInputError(f"{npy}: {len(array)} maps for {len(meta['sample_ids'])} sample ids (corrupt): re-run 'residuals'")
    return {sid: array[i] for i, sid in enumerate(meta["sample_ids"])}


# --------------------------------------------------------------------------- 3. pretraining

def pretraining_data(ctx: FoldContext) -> str:
    """What the fold's pretraining learns from: ``pretrain.data`` ("unlabelled": the dataset's
    unlabelled set, the paper's D_u; "unlabelled+train": it and the fold's training sinuses), or
    "train" (the fold's training sinuses) when the dataset has no unlabelled scans."""
    return ctx.config.pretrain.data if len(ctx.dataset.unlabelled) else "train"


def pretraining_crops(ctx: FoldContext, residuals: dict | None = None) -> tuple[SinusCrops, str]:
    """The crops the fold's pretraining learns from (:func:`pretraining_data`; labels are never
    used), with their residuals when given, and a description of them for the log."""
    size, data = ctx.config.crop_size, pretraining_data(ctx)
    unlabelled = ctx.dataset.unlabelled
    parts, said = [], []
    if data != "train":
        parts.append(SinusCrops.from_dataset(unlabelled, np.arange(len(unlabelled)), size, residuals))
        said.append(f"{len(parts[-1])} unlabelled sinuses ({len(unlabelled.patients)} patients)")
    if data != "unlabelled":
        parts.append(SinusCrops.from_dataset(ctx.dataset, ctx.indices("train"), size, residuals))
        said.append(f"{len(parts[-1])} training sinuses of fold {ctx.fold}"
                    + (" (the dataset has no unlabelled scans)" if data == "train" else ""))
    if len(parts) == 1:
        return parts[0], said[0]
    return SinusCrops(torch.cat([part.volumes for part in parts]), np.concatenate([part.labels for part in parts]),
                      sample_ids=[s for part in parts for s in part.sample_ids]), " + ".join(said)


def pretrain(ctx: FoldContext) -> Path:
    """Residual-reconstruction pretraining: the U-Net predicts the CAE residual from the image.

    BCE with logits against the soft residual target; LARS with the learning rate scaled
    linearly with the (global) batch, warm-up then cosine to zero; geometric augmentations move
    image and target together, noise touches the image only. Labels are not used: it learns from
    the unlabelled set (:func:`pretraining_crops`) and validates on the fold's validation sinuses.
    With ``pretrain.focal_lesions`` a share of the crops gets painted lesions (:mod:`.focal_lesions`), each
    lesion's mask added to the crop's target (the voxel-wise maximum), so the U-Net learns to outline
    small lesions on the wall as well as the CAE's residuals.
    BCE against soft targets cannot go below the targets' own mean binary entropy: each step also
    gives that floor over the same (augmented) target voxels, so the history has
    ``train_floor``/``val_floor`` and ``train_excess``/``val_excess`` = loss - floor (:data:`engine.FLOOR`).
    """
    stage_dir = ctx.pretrain_dir
    cfg = ctx.config.pretrain
    residuals = load_residuals(ctx)
    residual_sha = _done(ctx.residuals_dir)["residuals_sha256"]
    made_from = {"residuals_sha256": residual_sha, "pretrain": cfg.made_from(paints=True), "encoder_widths": list(ctx.config.encoder_widths),
                 "seed": ctx.config.seed, "data": pretraining_data(ctx)}

    def build() -> Training:
        size = ctx.config.crop_size
        train_set, described = pretraining_crops(ctx, residuals)
        val_set = SinusCrops.from_dataset(ctx.dataset, ctx.indices("val"), size, residuals)
        batch = runtime.per_process_batch(min(cfg.batch_size, len(train_set)))
        # labels are unknown here: every crop with an air cavity may be painted, its mask added to its target
        painter = (FocalLesionPainter(train_set.volumes, np.zeros(len(train_set)), cfg.focal_lesions)
                   if cfg.focal_lesions.prob > 0 else None)
        train_loader = CropLoader(train_set, batch, True, ctx.config.seed, ctx.device, cfg.augment, drop_last=True, paint=painter)
        val_loader = CropLoader(val_set, batch, False, ctx.config.seed, ctx.device) if len(val_set) else None
        runtime.seed_everything(ctx.config.seed, ctx.config.deterministic)
        model = network_spec(ctx.config).unet().to(ctx.device)
        optimizer, scheduler, lr = lars_with_warmup_cosine(model, cfg, batch * runtime.world_size(), train_loader)

        def bce_step(net, batch_, device):
            x = _image_batch(batch_, device)
            target = batch_["residual"].to(device, non_blocking=True)
            # the soft targets' own entropy bounds the loss from below: the history records it and the excess over it
            return F.binary_cross_entropy_with_logits(net(x), target), {FLOOR: target_entropy(target)}

        return Training(f"pretraining fold {ctx.fold}: {described}, {runtime.describe_batch(batch)}, LARS lr {lr:.4g}",
                        model, train_loader, val_loader, bce_step, cfg.epochs, optimizer, scheduler,
                        extra={"model": "ResidualUNet"})

    run_training_stage(ctx, stage_dir, made_from, build)
    return stage_dir / Checkpointer.BEST


# --------------------------------------------------------------------------- 3b. baseline pretraining

def pretrain_pretext(ctx: FoldContext, method: str) -> Path:
    """A baseline self-supervised pretraining (AE, DAE, SimCLR, BYOL, SimSiam, SparK) of the same encoder.

    Same data (:func:`pretraining_crops`, labels unused; validated on the fold's validation sinuses), optimiser and schedule
    as residual pretraining, and the same augmentation policy (``pretrain.augment``,
    :mod:`.augment`), so the comparison differs in the pretext task only (plus the view-making
    extras of a method, see :mod:`.pretext`); BYOL's target moves by EMA after each step.
    """
    if method not in PRETEXT:
        raise SinusAnomalyError(f"'{method}' is not a baseline pretraining method (known: {', '.join(PRETEXT)})")
    stage_dir = pretraining_dir(ctx, method)
    cfg = ctx.config.pretrain
    options = dict(ctx.config.pretext.get(method, {}))
    made_from = {"dataset": ctx.dataset_fingerprint, "fold": ctx.fold, "method": method, "options": options,
                 "pretrain": cfg.made_from(paints=False), "encoder_widths": list(ctx.config.encoder_widths),
                 "crop_size": ctx.config.crop_size, "seed": ctx.config.seed, "data": pretraining_data(ctx),
                 "unlabelled": ctx.unlabelled_fingerprint}

    def build() -> Training:
        size = ctx.config.crop_size
        train_set, described = pretraining_crops(ctx)
        val_set = SinusCrops.from_dataset(ctx.dataset, ctx.indices("val"), size)
        batch = runtime.per_process_batch(min(cfg.batch_size, len(train_set)))
        # one policy (cfg.augment): two-view methods apply it to the raw batch themselves, twice; the
        # others reconstruct their own input, so their loader gives its geometry only (noise would touch the target)
        two_views = issubclass(PRETEXT_METHODS[method], TwoViewPretext)
        view = None if two_views else dataclasses.replace(cfg.augment, noise_std=0.0)
        train_loader = CropLoader(train_set, batch, True, ctx.config.seed, ctx.device, view, drop_last=True)
        val_loader = CropLoader(val_set, batch, False, ctx.config.seed, ctx.device, drop_last=True) if len(val_set) >= 2 else None
        runtime.seed_everything(ctx.config.seed, ctx.config.deterministic)
        views = {"augment": cfg.augment} if two_views else {}
        model = build_pretext(method, encoder_widths=ctx.config.encoder_widths, **options, **views).to(ctx.device)
        optimizer, scheduler, lr = lars_with_warmup_cosine(model, cfg, batch * runtime.world_size(), train_loader)

        def pretext_step(net, batch_, device):
            return net(_image_batch(batch_, device))  # each pretext model returns its own loss

        return Training(f"{method} pretraining fold {ctx.fold}: {described}, {runtime.describe_batch(batch)}, LARS lr {lr:.4g}",
                        model, train_loader, val_loader, pretext_step, cfg.epochs, optimizer, scheduler,
                        extra={"model": type(model).__name__, "method": method}, after_step=model.after_optimizer_step)

    run_training_stage(ctx, stage_dir, made_from, build)
    return stage_dir / Checkpointer.BEST


def pretraining_dir(ctx: FoldContext, method: str) -> Path:
    """Where ``method``'s pretraining of the fold writes (and fine-tuning finds) its checkpoints."""
    return ctx.pretrain_dir if method == "residual" else ctx.fold_dir / f"pretrain_{method}"


def pretrain_method(ctx: FoldContext, method: str) -> Path:
    """Run ``method``'s pretraining for the fold (residual: needs the fold's residuals); its best checkpoint.

    One entry point for ``pretrain --method`` and the pipeline, so both make the same stage.
    """
    if method not in PRETRAINING:
        raise SinusAnomalyError(f"'{method}' has no pretraining stage (pretraining methods: {', '.join(PRETRAINING)})")
    return pretrain(ctx) if method == "residual" else pretrain_pretext(ctx, method)


# --------------------------------------------------------------------------- 4. fine-tuning

PREDICTION_COLUMNS = ("sample_id", "patient", "side", "split", "label", "anomaly_type", "p_anomalous")


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """w_j = n / (2 n_j): both classes weigh the same in the loss whatever the imbalance."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (2.0 * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def predict(model: SinusClassifier, crops: SinusCrops, device: torch.device, batch_size: int = 16) -> np.ndarray:
    """P(anomalous) for every crop of ``crops``, in order."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            x = crops.batch(torch.arange(start, min(start + batch_size, len(crops))), device)["image"]
            out.append(torch.softmax(model(x), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def finetune(ctx: FoldContext, method: str, fraction: float) -> Path:
    """Fine-tune a classifier with ``fraction`` % of the fold's training labels.

    ``method`` "none" starts from random weights (the first baseline), "residual" from the
    pretrained U-Net's encoder (every key must match). Weighted cross-entropy, AdamW (no decay on
    norm and bias parameters), augmentations at the configured probability, focal lesions painted into
    normal training crops when configured (:mod:`.focal_lesions`); the checkpoint of
    lowest validation loss predicts the validation and test sinuses (``predictions.csv``).
    """
    name = ctx.residual_method if method == "residual" else method
    stage_dir = ctx.fold_dir / "finetune" / name / f"frac{percent_key(fraction)}"
    cfg = ctx.config.finetune
    made_from = {"method": name, "fraction": fraction, "finetune": cfg.as_dict(), "encoder_widths": list(ctx.config.encoder_widths),
                 "crop_size": ctx.config.crop_size, "seed": ctx.config.seed, "dataset": ctx.dataset_fingerprint}
    pretrained_path = None
    if method in PRETRAINING:
        pretrained_path = _require(pretraining_dir(ctx, method) / Checkpointer.BEST, f"pretrain --method {method}", ctx.fold_dir)
    elif method == "medicalnet":
        pretrained_path = Path(ctx.config.medicalnet_weights)
    elif method != "none":
        raise SinusAnomalyError(f"unknown pretraining method '{method}' (known: {', '.join(METHODS)})")
    if pretrained_path is not None:
        made_from["pretrained_sha256"] = sha256_file(pretrained_path) if pretrained_path.is_file() else None
    spec = network_spec(ctx.config, classifier_shortcut(method))
    size = ctx.config.crop_size
    sets = {}  # filled by build, read by finish

    def build() -> Training:
        labelled = ctx.labelled_indices(fraction)
        sets["train"] = train_set = SinusCrops.from_dataset(ctx.dataset, labelled, size)
        sets["val"] = val_set = SinusCrops.from_dataset(ctx.dataset, ctx.indices("val"), size)
        sets["test"] = SinusCrops.from_dataset(ctx.dataset, ctx.indices("test"), size)
        batch = runtime.per_process_batch(min(cfg.batch_size, len(train_set)))
        painter = FocalLesionPainter(train_set.volumes, train_set.labels, cfg.focal_lesions) if cfg.focal_lesions.prob > 0 else None
        train_loader = CropLoader(train_set, batch, True, ctx.config.seed, ctx.device, cfg.augment, drop_single=True, paint=painter)
        val_loader = CropLoader(val_set, batch, False, ctx.config.seed, ctx.device) if len(val_set) else None
        runtime.seed_everything(ctx.config.seed, ctx.config.deterministic)
        model = spec.classifier()
        transfer = {}
        if method == "medicalnet":
            report = load_medicalnet_encoder(pretrained_path, model.encoder)
            transfer = {"medicalnet": {k: report[k] for k in ("loaded", "ignored", "missing", "unexpected")}}
        elif pretrained_path is not None:
            model.load_encoder(load_checkpoint(pretrained_path)["model"], prefix="encoder.")
        model = model.to(ctx.device)
        weights = class_weights(train_set.labels).to(ctx.device)

        def ce_step(net, batch_, device):
            x = _image_batch(batch_, device)
            return F.cross_entropy(net(x), batch_["label"].to(device), weight=weights)

        optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr)
        scheduler = WarmupCosine.for_loader(optimizer, train_loader, cfg.epochs, 0.05 * cfg.epochs) if cfg.schedule == "cosine" else None
        return Training(f"fine-tuning fold {ctx.fold}, {method} pretraining, {fraction} % labels: {len(train_set)} sinuses "
                        f"({int(train_set.labels.sum())} anomalous), {runtime.describe_batch(batch)}", model, train_loader, val_loader, ce_step,
                        cfg.epochs, optimizer, scheduler, extra={"model": "SinusClassifier", "method": method}, done=transfer,
                        recompute_batchnorm=cfg.recompute_batchnorm)

    def predict_val_and_test() -> None:
        best = spec.classifier()
        best.load_state_dict(load_checkpoint(stage_dir / Checkpointer.BEST)["model"])
        best = best.to(ctx.device)
        rows = []
        for split in ("val", "test"):
            subset = sets[split]
            for index, p in zip(subset.indices, predict(best, subset, ctx.device)):
                r = ctx.dataset.manifest[index]
                rows.append((r.sample_id, r.patient, r.side, split, r.label, r.anomaly_type, f"{float(p):.6f}"))
        write_csv_atomic(stage_dir / "predictions.csv", PREDICTION_COLUMNS, rows)  # run on rank 0 only

    run_training_stage(ctx, stage_dir, made_from, build, finish=predict_val_and_test)
    return stage_dir / "predictions.csv"


def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [dict(row, label=int(row["label"]), p_anomalous=float(row["p_anomalous"])) for row in csv.DictReader(fh)]
