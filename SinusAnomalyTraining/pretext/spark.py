"""SparK masked image modelling in 3D: patch masks, emulated sparse encoding, light decoder,
per-patch normalised targets."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.utils import pixelshuffle
from torch import nn

from SinusAnomalyLib.errors import PretextError
from SinusAnomalyLib.models import RESNET18_WIDTHS

from .base import PretextModel
from .losses import masked_patch_loss


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


class SparKDecoderBlock(nn.Module):
    """One block of SparK's light decoder: ``(B, c_in, s^3)`` -> ``(B, c_out, (2s)^3)``.

    ``upsample``: a learned x2 upsampling (transposed conv, kernel 4, stride 2, padding 1);
    ``conv``: 3x3x3 conv + BatchNorm + ReLU6, then 3x3x3 conv to ``c_out`` + BatchNorm (SparK's
    UNet block, in 3D).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose3d(c_in, c_in, kernel_size=4, stride=2, padding=1, bias=True)
        self.conv = nn.Sequential(
            nn.Conv3d(c_in, c_in, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(c_in),
            nn.ReLU6(inplace=True),
            nn.Conv3d(c_in, c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.upsample(x))


class SparKPretext(PretextModel):
    """SparK masked image modelling in 3D (Tian et al. 2023), with the paper's light decoder.

    * Masking: the crop is cut into ``patch_size``^3 patches (8^3, the paper); per sample a random
      ``mask_ratio`` (60 %) of them is masked (:func:`random_patch_mask`); masked patches of the
      input are set to 0.
    * Sparse encoding, emulated on the dense encoder (:class:`_SparseEncoding`): after every conv,
      pooling and activation the mask (resampled to that resolution) zeroes the masked positions
      again, and BatchNorm uses the statistics of the visible positions only. Where a feature map
      is coarser than the patch grid, a voxel is visible if any patch under it is.
    * Light decoder, 3 upsampling and 3 conv blocks (the paper's SparK baseline; SparK's own
      decoder has one block per halving of the encoder, five for this stride-32 encoder): the four
      stage outputs (layer4 .. layer1, 1/32 .. 1/4 resolution) are "densified": masked positions
      are filled with a learnable mask token of that level, then BatchNorm + a conv (1x1x1 for the
      deepest, 3x3x3 otherwise) projects them to the decoder width of that level. From the
      deepest, each of the three :class:`SparKDecoderBlock` s (x2 upsampling + conv block) takes
      the sum so far to the next level, where that level's densified map is added; so the
      decoder ends at 1/4 resolution (16^3 for a 64^3 crop). A linear 1x1x1 prediction head gives
      each 1/4-resolution position the values of the 4^3 voxels under it (arranged back to full
      resolution, as MAE's and SimMIM's linear heads predict a patch's pixels).
    * Loss (SparK's, with its normalised-pixel targets): each target patch is standardised by its
      own mean and standard deviation; the mean squared error per patch is averaged over the
      MASKED patches only (:func:`masked_patch_loss`). :meth:`reconstruct` therefore predicts
      patch-normalised intensities.

    Input edges must be multiples of 32 and of ``patch_size``.

    Args:
        patch_size: patch edge in voxels (8).
        mask_ratio: fraction of patches masked (0.6).
        decoder_widths: widths of the decoder at 1/32, 1/16, 1/8, 1/4 (default: the encoder's).
    """

    size_multiple = 32
    head_scale = 4  # layer1's resolution is 1/4 of the input's

    def __init__(
        self,
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
        in_channels: int = 1,
        shortcut_type: str = "B",
        patch_size: int = 8,
        mask_ratio: float = 0.6,
        decoder_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type)
        if int(patch_size) < 2:
            raise PretextError(f"patch_size must be at least 2 (a patch's values are standardised), got {patch_size}")
        if not 0.0 < float(mask_ratio) < 1.0:
            raise PretextError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.patch_size = int(patch_size)
        self.mask_ratio = float(mask_ratio)
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
        self.decoder = nn.ModuleList(SparKDecoderBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Conv3d(widths[-1], in_channels * self.head_scale**3, kernel_size=1)

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
        """Prediction ``(B, C, D, H, W)`` of the whole crop, in patch-normalised intensities,
        from its visible patches."""
        features = self.sparse_features(x, visible)[1:][::-1]  # layer4 .. layer1
        dense = []
        for feature, token, densify in zip(features, self.mask_tokens, self.densify):
            keep = resample_mask(visible, feature.shape[2:])
            dense.append(densify(torch.where(keep, feature, token.to(feature.dtype))))
        out = dense[0]
        for block, skip in zip(self.decoder, dense[1:]):
            out = block(out) + skip
        return pixelshuffle(self.head(out), 3, self.head_scale)

    def loss(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Per-patch normalised MSE over the masked patches; ``visible`` (``(B, 1, *grid)`` bool) fixes the mask."""
        self.check_batch(x)
        if visible is None:
            visible = self.random_mask(x)
        elif tuple(visible.shape) != (x.shape[0], 1, *self.patch_grid(x)):
            raise PretextError(f"mask of shape {tuple(visible.shape)} does not fit the batch's patch grid {self.patch_grid(x)}")
        visible = visible.bool()
        return masked_patch_loss(self.reconstruct(x, visible), x, ~visible, self.patch_size)
