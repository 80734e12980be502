"""Training data: sinus crops held as one tensor, served in batches by index on the training device.

:class:`SinusCrops` holds the selected crops of a prepared dataset, and their residual targets
when given, as ONE float16 tensor ``(N, C, S, S, S)`` in memory (channel 0 the image, channel 1
the residual), as they are on disk. :class:`CropLoader` serves it in batches: one gather per batch
(``index_select``; on a GPU into pinned memory, copied without blocking on a side stream one
batch ahead), widened to float32 on the device, then augmented there by
:func:`SinusAnomalyTraining.augment.augment_batch` (training loaders). No per-sample Python, no
worker processes. A training loader may first hand each gathered batch to a painter on the CPU
(:mod:`SinusAnomalyTraining.focal_lesions`), which may change crops and their labels.

A batch is ``{"image": (B, 1, S, S, S) float32, "label": (B,) int64}`` on the device, plus
``"residual": (B, 1, S, S, S)`` when residuals are held. Residuals are attached by sample id,
never by position, so an image can only ever meet its own residual (the authors paired two
unsorted directory listings).

Crops are 64^3 on disk; a smaller ``crop_size`` (the CPU demo uses 32) is made once, in memory,
by area averaging.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from SinusAnomalyLib.dataset import PreparedDataset
from SinusAnomalyLib.errors import DatasetError
from SinusAnomalyLib.residuals import resize_crops

from . import runtime
from .augment import augment_batch
from .config import AugmentSettings

_CHUNK = 256  # crops widened and resized at a time while filling the tensor (bounds the float32 copy)
# (volumes (B, C, S, S, S), labels (B,), rows (B,)) of a batch on the CPU -> new volumes and labels
Painter = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


class SinusCrops:
    """Crops, optionally with residual targets, as one float16 tensor; build it with :meth:`from_dataset`.

    Attributes:
        volumes: ``(N, C, S, S, S)`` float16; channel 0 the crop, channel 1 its residual (if any).
        labels: ``(N,)`` int64 NumPy array.
        indices: ``(N,)`` manifest rows of the crops (``arange(N)`` when made from tensors).
        sample_ids: their sample ids.
    """

    def __init__(self, volumes: torch.Tensor, labels: np.ndarray, indices: np.ndarray | None = None,
                 sample_ids: Sequence[str] | None = None) -> None:
        if volumes.dim() != 5 or len(volumes) != len(labels):
            raise DatasetError(f"crops must be (N, C, S, S, S) with one label each, got {tuple(volumes.shape)} and {len(labels)} labels")
        self.volumes = volumes
        self.labels = np.asarray(labels, dtype=np.int64)
        self._labels = torch.from_numpy(self.labels)
        self.indices = np.arange(len(volumes)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.sample_ids = [str(i) for i in self.indices] if sample_ids is None else list(sample_ids)

    @classmethod
    def from_dataset(cls, dataset: PreparedDataset, indices: Sequence[int], crop_size: int = 64,
                     residuals: dict | None = None) -> SinusCrops:
        """The crops of manifest rows ``indices`` at ``crop_size`` (64, or a divisor such as 32 for CPU
        runs), with their residuals from ``{sample_id: (S, S, S) array}`` when given (every crop needs one)."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = [dataset.manifest[i] for i in indices]
        sample_ids = [r.sample_id for r in rows]
        if residuals is not None:
            missing = [s for s in sample_ids if s not in residuals]
            if missing:
                raise DatasetError(f"no residual for {len(missing)} samples (first: {missing[0]}); recompute residuals")
        n, size = len(indices), int(crop_size)
        volumes = torch.empty((n, 1 if residuals is None else 2, size, size, size), dtype=torch.float16)
        for start in range(0, n, _CHUNK):
            chunk = indices[start:start + _CHUNK]
            volumes[start:start + len(chunk), 0] = torch.from_numpy(resize_crops(dataset.crops[chunk], size))
        for i, sample_id in enumerate(sample_ids if residuals is not None else ()):
            residual = np.array(residuals[sample_id], dtype=np.float16)  # a copy: the cache is memory-mapped read-only
            if residual.shape != (size,) * 3:
                raise DatasetError(f"the residual of {sample_id} has shape {residual.shape}, the crops {(size,) * 3}; recompute residuals")
            volumes[i, 1] = torch.from_numpy(residual)
        return cls(volumes, np.array([r.label for r in rows], dtype=np.int64), indices, sample_ids)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def has_residuals(self) -> bool:
        return self.volumes.shape[1] > 1

    def stage(self, rows: torch.Tensor, device: torch.device, stream: torch.cuda.Stream | None = None,
              paint: Painter | None = None) -> dict:
        """``{"volumes": volumes[rows] (float16), "label": labels[rows]}`` on ``device``, not yet widened;
        ``paint`` (e.g. :class:`~SinusAnomalyTraining.focal_lesions.FocalLesionPainter`) may change
        both on the CPU first.

        On a GPU the rows are gathered into pinned memory and copied without blocking, on ``stream``
        when given (:class:`CropLoader`'s side stream; the caller makes its stream wait for it).
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        labels = self._labels[rows]
        if device.type == "cuda" and paint is None:  # gathered straight into pinned memory
            volumes = torch.empty((len(rows), *self.volumes.shape[1:]), dtype=self.volumes.dtype, pin_memory=True)
            torch.index_select(self.volumes, 0, rows, out=volumes)
        else:
            volumes = self.volumes.index_select(0, rows)
            if paint is not None:
                volumes, labels = paint(volumes, labels, rows)
            if device.type != "cuda":
                return {"volumes": volumes, "label": labels}
            volumes = volumes.pin_memory()
        with torch.cuda.stream(stream):  # None: the current stream
            return {"volumes": volumes.to(device, non_blocking=True), "label": labels.pin_memory().to(device, non_blocking=True)}

    @staticmethod
    def finish(staged: dict, augment: AugmentSettings | None = None) -> dict:
        """The batch (see the module docstring) of :meth:`stage`'s tensors: widened to float32 on their
        device, augmented with ``augment`` if given."""
        volumes = staged["volumes"].float()
        if augment is not None:
            volumes = augment_batch(volumes, augment)
        out = {"image": volumes[:, :1], "label": staged["label"]}
        if volumes.shape[1] > 1:
            out["residual"] = volumes[:, 1:]
        return out

    def batch(self, rows: torch.Tensor, device: torch.device, augment: AugmentSettings | None = None) -> dict:
        """The batch of ``rows`` on ``device`` (see the module docstring), augmented with ``augment`` if given."""
        return self.finish(self.stage(rows, device), augment)


class CropLoader:
    """Batches of a :class:`SinusCrops` on ``device``, in a reproducible order, augmented for training.

    The order is a seeded permutation (``shuffle``) or the held order; under ``torchrun`` a
    ``DistributedSampler`` (:attr:`sampler`, :func:`runtime.distributed_sampler`) gives each
    process its share. :func:`SinusAnomalyTraining.engine.fit` reseeds :attr:`generator` and calls
    the sampler's ``set_epoch`` every epoch. ``drop_last`` drops an incomplete last batch (when
    there is a complete one); ``drop_single`` drops it only when it holds a single sample: batch
    norm cannot train on one sample whose deepest feature maps are one voxel (32^3 crops through a
    ResNet), and a shuffled loader serves that sample in other epochs.
    """

    def __init__(self, crops: SinusCrops, batch_size: int, shuffle: bool, seed: int, device: torch.device,
                 augment: AugmentSettings | None = None, drop_last: bool = False, drop_single: bool = False,
                 paint: Painter | None = None) -> None:
        if batch_size < 1:
            raise DatasetError(f"batch size must be at least 1, got {batch_size}")
        self.crops = crops
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.device = torch.device(device)
        self.augment = augment if augment is not None and augment.prob > 0 else None
        self.paint = paint
        self.sampler = runtime.distributed_sampler(crops, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.generator = runtime.make_generator(seed)
        n = self._n_samples()
        self.drop_last = bool(drop_last) and n >= self.batch_size
        self.drop_single = bool(drop_single) and n > self.batch_size and n % self.batch_size == 1

    def _n_samples(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.crops)

    def __len__(self) -> int:
        n = self._n_samples()
        return n // self.batch_size if self.drop_last or self.drop_single else math.ceil(n / self.batch_size)

    def order(self) -> torch.Tensor:
        """This epoch's rows, in serving order (draws the permutation from :attr:`generator`)."""
        if self.sampler is not None:
            return torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        n = len(self.crops)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def __iter__(self) -> Iterator[dict]:
        """The batches; each is staged (:meth:`SinusCrops.stage`) before the previous one is handed out,
        so on a GPU its gather and copy (on a side stream) overlap the model's work on the previous one."""
        order = self.order()
        rows = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]
        copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        ahead = self.crops.stage(rows[0], self.device, copy_stream, self.paint) if rows else None
        for b in range(len(rows)):
            staged = ahead
            if copy_stream is not None:  # PyTorch's rule for tensors made on one stream and used on another
                compute = torch.cuda.current_stream(self.device)
                compute.wait_stream(copy_stream)
                for t in staged.values():
                    t.record_stream(compute)
            if b + 1 < len(rows):  # queued after the wait, so this batch's work does not wait for it
                ahead = self.crops.stage(rows[b + 1], self.device, copy_stream, self.paint)
            yield self.crops.finish(staged, self.augment)

