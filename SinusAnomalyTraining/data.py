"""Training data: sinus crops of a prepared dataset as MONAI-style dictionaries.

Each item is ``{"image": (1, S, S, S) float32, "label": int64, "sample_id": str}`` plus
``"residual": (1, S, S, S) float32`` when residual targets are attached. Residuals are attached by
sample id, never by position, so an image can only ever meet its own residual (the authors
paired two unsorted directory listings).

Crops are 64^3 on disk; a smaller ``crop_size`` (the CPU demo uses 32) is made once, in memory,
by area averaging.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.transforms import Compose, RandAffined, RandFlipd, RandGaussianNoised
from torch.utils.data import DataLoader, Dataset

from SinusAnomalyLib.dataset import PreparedDataset
from SinusAnomalyLib.errors import DatasetError
from SinusAnomalyLib.residuals import resize_crops

from . import runtime
from .config import AugmentSettings


class SinusCrops(Dataset):
    """Selected crops of a prepared dataset, optionally paired with residual targets.

    Args:
        dataset: the prepared dataset.
        indices: crop indices (rows of the manifest) to serve.
        crop_size: edge length served (64, or a divisor such as 32 for CPU runs).
        residuals: optional ``{sample_id: (S, S, S) array}`` of targets; every served sample must
            have one.
        transform: a MONAI dictionary transform applied to each item.
    """

    def __init__(
        self,
        dataset: PreparedDataset,
        indices: Sequence[int],
        crop_size: int = 64,
        residuals: dict | None = None,
        transform=None,
    ) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        rows = [dataset.manifest[i] for i in self.indices]
        self.sample_ids = [r.sample_id for r in rows]
        self.labels = np.array([r.label for r in rows], dtype=np.int64)
        self.images = resize_crops(dataset.crops[self.indices], crop_size) if len(self.indices) else np.zeros((0,) + (crop_size,) * 3, np.float32)
        self.residuals = None
        if residuals is not None:
            missing = [s for s in self.sample_ids if s not in residuals]
            if missing:
                raise DatasetError(f"no residual for {len(missing)} samples (first: {missing[0]}); recompute residuals")
            self.residuals = np.stack([np.asarray(residuals[s], dtype=np.float32) for s in self.sample_ids]) if self.sample_ids else None
            if self.residuals is not None and self.residuals.shape != self.images.shape:
                raise DatasetError(f"residuals of shape {self.residuals.shape[1:]} do not match crops {self.images.shape[1:]}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = {
            "image": torch.from_numpy(self.images[i][None].copy()),
            "label": torch.tensor(self.labels[i]),
            "sample_id": self.sample_ids[i],
        }
        if self.residuals is not None:
            item["residual"] = torch.from_numpy(self.residuals[i][None].copy())
        if self.transform is not None:
            # MONAI's random transforms keep generators of their own, seeded from OS entropy at
            # import; seeding them from torch's generator (reseeded every epoch by the training
            # loop, per worker by the loader) makes augmentation reproducible and resumable.
            self.transform.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
            item = self.transform(item)
        return item


def augmentation(settings: AugmentSettings, with_residual: bool) -> Compose | None:
    """Training augmentations with ``settings``' probability and ranges (``None`` when the probability is 0).

    Geometric transforms (random affine, flips) move image and residual target together;
    intensity noise touches the image only (the authors also noised the target).
    """
    prob = settings.prob
    if prob <= 0.0:
        return None
    geometric_keys = ["image", "residual"] if with_residual else ["image"]
    rotate = np.radians(settings.rotate_deg)
    transforms = [
        RandAffined(
            keys=geometric_keys,
            prob=prob,
            rotate_range=(rotate, rotate, rotate),
            scale_range=(settings.scale,) * 3,
            translate_range=(settings.translate_voxels,) * 3,
            mode="bilinear",
            padding_mode="border",
        ),
        RandFlipd(keys=geometric_keys, prob=prob / 2.0, spatial_axis=1),
        RandFlipd(keys=geometric_keys, prob=prob / 2.0, spatial_axis=2),
        RandGaussianNoised(keys=["image"], prob=prob, mean=0.0, std=settings.noise_std),
    ]
    return Compose(transforms)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """DataLoader whose order is reproducible (seeded generator; DistributedSampler under torchrun)."""
    sampler = runtime.distributed_sampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last and len(dataset) > batch_size,
        generator=runtime.make_generator(seed),
        worker_init_fn=runtime.worker_init_fn if num_workers else None,
    )
