"""SparK-style masked image modelling in 3D: patch masks, emulated sparse encoding, light decoder."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from SinusAnomalyLib.errors import PretextError
from SinusAnomalyLib.models import RESNET18_WIDTHS

from .base import PretextModel, upsample_block
from .losses import masked_reconstruction_loss


def random_patch_mask(batch: int, grid: Sequence[int], ratio: float = 0.6, device=None) -> torch.Tensor:
    """Random patch mask per sample: ``(B, 1, *grid)`` bool, True where the patch is VISIBLE.

    Exactly ``round(ratio * n_patches)`` patches of each sample are masked (at least one stays
    visible), chosen uniformly with torch's global RNG.
    """
    if not 0.0 < float(ratio) < 1.0:
        raise PretextError(f"the mask ratio must be in (0, 1), got {ratio}")
    n = math.prod(int(g) for g in grid)
    n_masked = min(int(round(float(ratio) * n)), n - 1)
    order = torch.rand(batch, n, device=device).argsort(dim=1)
    visible = order >= n_masked  # the n_masked patches of lowest random rank are masked
    return visible.view(batch, 1, *(int(g) for g in grid))


def resample_mask(visible: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Patch-grid mask ``(B, 1, *grid)`` -> mask at a feature map's resolution ``(B, 1, *size)``.

    Along each axis the size must be a multiple of the grid (each patch covers whole voxels:
    nearest-neighbour repetition) or divide it (each voxel covers whole patches: the voxel is
    visible if ANY of its patches is, a max-pool; its value is computed only from the visible
    voxels below it, which sparse encoding keeps masked content out of).
    """
    grid = visible.shape[2:]
    out = visible
    kernel = []
    for axis, (g, s) in enumerate(zip(grid, size)):
        g, s = int(g), int(s)
        if s % g == 0:
            if s > g:
                out = out.repeat_interleave(s // g, dim=2 + axis)
            kernel.append(1)
        elif g % s == 0:
            kernel.append(g // s)
        else:
            raise PretextError(f"a feature map of size {tuple(size)} does not align with the patch grid {tuple(grid)}")
    if any(k > 1 for k in kernel):
        out = F.max_pool3d(out.float(), kernel_size=kernel, stride=kernel) > 0.5
    return out


class _SparseEncoding:
    """Context manager emulating SparK's sparse convolution on a dense encoder.

    While active: the output of every leaf module of the encoder (conv, max-pool, activation) is
    multiplied by the visible mask at its resolution, and every BatchNorm normalises with the
    statistics of the VISIBLE positions only (also for its running statistics; masked positions
    come out as zeros). So masked positions stay zero at every layer, and neither the features
    nor the BatchNorm statistics depend on masked content. Hooks and overrides are removed on exit.
    """

    def __init__(self, encoder: nn.Module, visible: torch.Tensor) -> None:
        self.encoder = encoder
        self.visible = visible
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._handles: list = []
        self._patched: list[nn.Module] = []

    def mask(self, size: Sequence[int]) -> torch.Tensor:
        key = tuple(int(s) for s in size)
        if key not in self._cache:
            self._cache[key] = resample_mask(self.visible, key)
        return self._cache[key]

    def _mask_output(self, module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 5:
            return output * self.mask(output.shape[2:]).to(output.dtype)
        return output

    def _sparse_batch_norm(self, bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        visible = self.mask(x.shape[2:])[:, 0]  # (B, D, H, W)
        channels_last = x.movedim(1, -1)  # (B, D, H, W, C)
        rows = channels_last[visible]  # (n_visible, C)
        use_batch_stats = bn.training or bn.running_mean is None
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        normed = F.batch_norm(
            rows,
            bn.running_mean if not bn.training or bn.track_running_stats else None,
            bn.running_var if not bn.training or bn.track_running_stats else None,
            bn.weight,
            bn.bias,
            use_batch_stats,
            factor,
            bn.eps,
        )
        out = normed.new_zeros(channels_last.shape)
        out[visible] = normed
        return out.movedim(-1, 1)

    def __enter__(self) -> _SparseEncoding:
        try:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.forward = lambda x, _bn=module: self._sparse_batch_norm(_bn, x)
                    self._patched.append(module)
                elif not any(True for _ in module.children()):
                    self._handles.append(module.register_forward_hook(self._mask_output))
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for module in self._patched:
            del module.forward  # back to the class's forward
        self._handles.clear()
        self._patched.clear()


class SparKPretext(PretextModel):
    """SparK-style masked image modelling in 3D (Tian et al. 2023, adapted as in the paper).

    * Masking: the crop is cut into ``patch_size``^3 patches (8^3, the paper); per sample a random
      ``mask_ratio`` (60 %) of them is masked (:func:`random_patch_mask`); masked patches of the
      input are set to 0.
    * Sparse encoding, emulated on the dense encoder (:class:`_SparseEncoding`): after every conv,
      pooling and activation the mask (resampled to that resolution) zeroes the masked positions
      again, and BatchNorm uses the statistics of the visible positions only. Where a feature map
      is coarser than the patch grid, a voxel is visible if any patch under it is.
    * Light decoder (3 upsampling + 3 conv blocks, the paper): the four stage outputs
      (layer1..layer4, 1/4 .. 1/32 resolution) are "densified": masked positions are filled with a
      learnable mask token of that level, then BatchNorm + a conv (1x1x1 for the deepest, 3x3x3
      otherwise) projects them to the decoder width; from the deepest level, each block upsamples
      x2 (trilinear + 3x3x3 conv + BN + ReLU) and adds the densified map of the next level; a head
      upsamples x4 to full resolution and convolves to the image's channels (linear output).
    * Loss: MSE (or L1) between reconstruction and input over the MASKED voxels only.

    Input edges must be multiples of 32 and of ``patch_size``.

    Args:
        patch_size: patch edge in voxels (8).
        mask_ratio: fraction of patches masked (0.6).
        decoder_widths: widths of the decoder at 1/32, 1/16, 1/8, 1/4 (default: the encoder's).
        loss: ``"mse"`` or ``"l1"``.
    """

    size_multiple = 32

    def __init__(
        self,
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
        in_channels: int = 1,
        shortcut_type: str = "B",
        patch_size: int = 8,
        mask_ratio: float = 0.6,
        decoder_widths: Sequence[int] | None = None,
        loss: str = "mse",
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type)
        if int(patch_size) < 1:
            raise PretextError(f"patch_size must be positive, got {patch_size}")
        if not 0.0 < float(mask_ratio) < 1.0:
            raise PretextError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if loss not in ("mse", "l1"):
            raise PretextError(f"loss must be 'mse' or 'l1', got {loss!r}")
        self.patch_size = int(patch_size)
        self.mask_ratio = float(mask_ratio)
        self.loss_kind = loss
        levels = self.encoder.feature_channels[1:][::-1]  # layer4, layer3, layer2, layer1
        widths = tuple(int(w) for w in (decoder_widths or levels))
        if len(widths) != 4:
            raise PretextError(f"decoder_widths needs 4 widths (1/32 to 1/4 resolution), got {widths}")
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1, 1)) for c in levels)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        self.densify = nn.ModuleList(
            nn.Sequential(nn.BatchNorm3d(c), nn.Conv3d(c, w, kernel_size=1 if i == 0 else 3, padding=0 if i == 0 else 1))
            for i, (c, w) in enumerate(zip(levels, widths))
        )
        self.up_blocks = nn.ModuleList(upsample_block(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Sequential(
            nn.Upsample(scale_factor=4, mode="trilinear", align_corners=False),
            nn.Conv3d(widths[-1], in_channels, kernel_size=3, padding=1),
        )

    def check_batch(self, x: torch.Tensor) -> None:
        super().check_batch(x)
        if any(size % self.patch_size for size in x.shape[2:]):
            raise PretextError(f"spatial edges must be multiples of the patch size {self.patch_size}, got {tuple(x.shape)}")

    def patch_grid(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(int(s) // self.patch_size for s in x.shape[2:])

    def random_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A fresh random visible-patch mask ``(B, 1, *grid)`` for the batch."""
        return random_patch_mask(x.shape[0], self.patch_grid(x), self.mask_ratio, device=x.device)

    def voxel_mask(self, visible: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Visible mask at full resolution, ``(B, 1, D, H, W)`` bool."""
        return resample_mask(visible, x.shape[2:])

    def sparse_features(self, x: torch.Tensor, visible: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of the masked batch (masked input patches zeroed, sparse encoding);
        masked positions are exactly 0 in every map."""
        masked_input = x * self.voxel_mask(visible, x).to(x.dtype)
        with _SparseEncoding(self.encoder, visible):
            return self.encoder(masked_input)

    def reconstruct(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(B, C, D, H, W)`` of the whole crop from its visible patches."""
        features = self.sparse_features(x, visible)[1:][::-1]  # layer4 .. layer1
        dense = []
        for feature, token, densify in zip(features, self.mask_tokens, self.densify):
            keep = resample_mask(visible, feature.shape[2:])
            dense.append(densify(torch.where(keep, feature, token.to(feature.dtype))))
        out = dense[0]
        for block, skip in zip(self.up_blocks, dense[1:]):
            out = block(out) + skip
        return self.head(out)

    def loss(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Masked-voxel reconstruction loss; ``visible`` (``(B, 1, *grid)`` bool) fixes the mask."""
        self.check_batch(x)
        if visible is None:
            visible = self.random_mask(x)
        elif tuple(visible.shape) != (x.shape[0], 1, *self.patch_grid(x)):
            raise PretextError(f"mask of shape {tuple(visible.shape)} does not fit the batch's patch grid {self.patch_grid(x)}")
        visible = visible.bool()
        prediction = self.reconstruct(x, visible)
        return masked_reconstruction_loss(prediction, x, ~self.voxel_mask(visible, x), self.loss_kind)
