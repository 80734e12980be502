"""The residual maps' median filter against MONAI's float median filter."""
import pytest
import torch
from monai.networks.layers import median_filter

from SinusAnomalyLib.residuals import MEDIAN_LEVELS, median_smooth


@pytest.mark.parametrize("kernel", [3, 5])
def test_median_smooth_matches_a_float_median_filter_to_quantisation(kernel):
    generator = torch.Generator().manual_seed(kernel)
    maps = torch.rand(2, 1, 20, 18, 16, generator=generator)
    maps[0, 0, 5:12, 4:10, 3:9] = 1.0  # a bright blob with edges, as a lesion gives
    expected = median_filter(maps, kernel_size=(kernel,) * 3)  # replicate padding, float values
    got = median_smooth(maps, kernel)
    assert got.shape == maps.shape and got.dtype == torch.float32
    # a median of quantised values is the quantised median: at most half a step apart everywhere,
    # borders included
    assert (got - expected).abs().max().item() <= 0.5 / MEDIAN_LEVELS + 1e-6
    assert not torch.allclose(got, maps, atol=0.1)  # it did filter


def test_median_smooth_removes_speckle_and_keeps_a_blob():
    maps = torch.zeros(1, 1, 16, 16, 16)
    maps[0, 0, 4:10, 4:10, 4:10] = 1.0
    maps[0, 0, 13, 2, 2] = 1.0  # a lone bright voxel
    out = median_smooth(maps, 3)[0, 0].numpy()
    assert out[13, 2, 2] == 0.0 and out[6, 6, 6] == 1.0 and out[4, 4, 4] == 0.0  # blob corner rounds off


def test_median_smooth_kernel_one_is_identity_and_even_kernels_are_refused():
    maps = torch.rand(1, 1, 8, 8, 8)
    assert median_smooth(maps, 1) is maps
    with pytest.raises(ValueError, match="odd"):
        median_smooth(maps, 4)
