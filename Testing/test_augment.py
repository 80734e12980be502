"""The one augmentation policy, batched on the device, and the loader that serves crops by index."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from SinusAnomalyTraining import runtime
from SinusAnomalyTraining.augment import AugmentParams, augment_batch, draw_params, random_intensity_scale
from SinusAnomalyTraining.config import AugmentSettings, ConfigError, config_from_dict, load_config
from SinusAnomalyTraining.data import CropLoader, SinusCrops
from SinusAnomalyTraining.engine import Checkpointer, fit
from SinusAnomalyTraining.pretext import build_pretext

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("two_torch_threads")


def only(batch: int, **changes) -> AugmentParams:
    """Parameters that do nothing, except ``changes``."""
    none = AugmentParams(affine=torch.zeros(batch, dtype=torch.bool), angles=torch.zeros(batch, 3, dtype=torch.float64),
                         scale=torch.ones(batch, 3, dtype=torch.float64), shift=torch.zeros(batch, 3, dtype=torch.float64),
                         flip=torch.zeros(batch, 2, dtype=torch.bool), noise=torch.zeros(batch, dtype=torch.bool),
                         noise_std=torch.zeros(batch, dtype=torch.float64))
    return dataclasses.replace(none, **changes)


def blob(size: int, centre, width: float = 1.5) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*(torch.arange(size, dtype=torch.float64),) * 3, indexing="ij"))
    d2 = ((grid - torch.tensor(centre, dtype=torch.float64).view(3, 1, 1, 1)) ** 2).sum(0)
    return torch.exp(-d2 / (2 * width ** 2)).float()


def centroid(volume: torch.Tensor) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in volume.shape), indexing="ij"))
    w = volume.double().clamp_min(0)
    w = torch.where(w > 0.2 * w.max(), w, torch.zeros_like(w))  # the blob, not the border smear
    return (grid * w).flatten(1).sum(1) / w.sum()


def rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation about D, then H, then W (as the module's), for one sample's three angles."""
    a, b, c = (float(v) for v in angles)
    about_d = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64)
    about_h = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]], dtype=torch.float64)
    about_w = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]], dtype=torch.float64)
    return about_w @ about_h @ about_d


# ------------------------------------------------------------------------------ the policy

@pytest.mark.parametrize("flips,flipped_axes", [("left-right", (0,)), ("authors", (1, 2))])
def test_a_landmark_lands_at_the_same_place_in_image_and_target_where_the_parameters_say(flips, flipped_axes):
    size, landmark = 32, (12.0, 18.0, 14.0)
    image = blob(size, landmark) + 0.3 * blob(size, (22.0, 8.0, 20.0), width=3.0)  # the image has more than the landmark
    target = blob(size, landmark)
    x = torch.stack([image, target])[None].repeat(6, 1, 1, 1, 1)
    settings = AugmentSettings(prob=1.0, rotate_deg=15, scale=0.2, translate_voxels=4, noise_std=0.0, flips=flips)
    torch.manual_seed(3)
    params = draw_params(6, settings)
    out = augment_batch(x, settings, params=params)
    centre = (size - 1) / 2.0
    for i in range(6):
        assert bool(params.affine[i])
        # an output voxel o samples the input at L (o - c) + t + c: the landmark p lands at L^-1 (p - c - t) + c
        linear = rotation(params.angles[i]) @ torch.diag(params.scale[i])
        expected = torch.linalg.solve(linear, torch.tensor(landmark, dtype=torch.float64) - centre - params.shift[i]) + centre
        for axis, flipped in zip(flipped_axes, params.flip[i]):
            if flipped:
                expected[axis] = size - 1 - expected[axis]
        assert torch.allclose(centroid(out[i, 1]), expected, atol=0.35), (i, centroid(out[i, 1]), expected)
        peak_image = np.unravel_index(int(out[i, 0].argmax()), out.shape[2:])
        peak_target = np.unravel_index(int(out[i, 1].argmax()), out.shape[2:])
        assert peak_image == peak_target


def test_every_channel_goes_through_the_same_warp_exactly():
    torch.manual_seed(0)
    image = torch.rand(8, 1, 16, 16, 16)
    x = torch.cat([image, 0.5 * image], dim=1)  # a target that is a linear function of the image
    settings = AugmentSettings(prob=1.0, rotate_deg=10, scale=0.1, translate_voxels=2, noise_std=0.0)
    out = augment_batch(x, settings)
    assert not torch.allclose(out[:, :1], image)
    assert torch.allclose(out[:, 1:], 0.5 * out[:, :1], atol=1e-6)  # grid_sample is linear: same warp, same result


@pytest.mark.parametrize("name", ["paper", "demo"])
def test_parameter_ranges_and_probabilities_match_the_config(name):
    settings = load_config(name).pretrain.augment
    torch.manual_seed(1)
    n = 40000
    p = draw_params(n, settings)
    tolerance = 4 * math.sqrt(0.25 / n)
    assert abs(p.affine.double().mean() - settings.prob) < tolerance
    assert abs(p.noise.double().mean() - settings.prob) < tolerance
    assert (p.flip.double().mean(0) - settings.prob / 2).abs().max() < tolerance  # each flip prob / 2
    for values, bound in ((p.angles, math.radians(settings.rotate_deg)), (p.scale - 1.0, settings.scale),
                          (p.shift, settings.translate_voxels)):
        assert values.abs().max() <= bound + 1e-12
        assert (values.max(0).values > 0.99 * bound).all() and (values.min(0).values < -0.99 * bound).all()  # uniform over the range
    assert (p.noise_std[p.noise] <= settings.noise_std).all() and p.noise_std[p.noise].max() > 0.99 * settings.noise_std
    assert (p.noise_std[~p.noise] == 0).all()


def test_flips_are_exact_and_undrawn_samples_are_untouched():
    torch.manual_seed(0)
    x = torch.rand(4, 2, 8, 8, 8)  # one sample: (C, D, H, W)
    flips = torch.tensor([[True, False], [False, True], [True, True], [False, False]])
    out = augment_batch(x, AugmentSettings(0.5, 10, 0.1, 2, 0.1, flips="authors"), params=only(4, flip=flips))
    assert torch.equal(out[0], x[0].flip(2)) and torch.equal(out[1], x[1].flip(3))
    assert torch.equal(out[2], x[2].flip(2).flip(3)) and torch.equal(out[3], x[3])
    out = augment_batch(x, AugmentSettings(0.5, 10, 0.1, 2, 0.1), params=only(4, flip=flips))  # default: left-right only
    assert torch.equal(out[0], x[0].flip(1)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(1))
    assert torch.equal(augment_batch(x, AugmentSettings(0.5, 10, 0.1, 2, 0.1, flips="none"), params=only(4, flip=flips)), x)
    warped = augment_batch(x, AugmentSettings(1.0, 10, 0.1, 2, 0.0), params=only(4, affine=torch.tensor([True, False, True, False]),
                                                                                  angles=torch.full((4, 3), 0.1, dtype=torch.float64)))
    assert torch.equal(warped[1], x[1]) and torch.equal(warped[3], x[3]) and not torch.allclose(warped[0], x[0])


def test_noise_touches_the_image_channel_only():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 16, 16, 16)
    std = torch.tensor([0.2, 0.0, 0.1], dtype=torch.float64)
    out = augment_batch(x, AugmentSettings(1.0, 0, 0, 0, 0.2), params=only(3, noise=std > 0, noise_std=std))
    assert torch.equal(out[:, 1], x[:, 1])  # the target never gets noise
    assert torch.equal(out[1], x[1])
    assert abs(float((out[0, 0] - x[0, 0]).std()) - 0.2) < 0.01 and abs(float((out[2, 0] - x[2, 0]).std()) - 0.1) < 0.005


def test_gamma_changes_the_image_channel_of_the_drawn_samples_only():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 8, 8, 8)
    gamma = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    out = augment_batch(x, AugmentSettings(1.0, 0, 0, 0, 0.0, gamma_max=2.0), params=only(3, gamma=gamma))
    torch.testing.assert_close(out[0, 0], x[0, 0] ** 2)
    torch.testing.assert_close(out[2, 0], x[2, 0] ** 0.5)
    assert torch.equal(out[1], x[1]) and torch.equal(out[:, 1], x[:, 1])  # undrawn sample, target channel


def test_gamma_is_log_uniform_in_its_range_and_leaves_the_other_draws_as_they_were():
    """Turning gamma on must not change what a policy without it draws (the same seed gives the
    same warps, flips and noise), and gamma spreads over [1 / gamma_max, gamma_max]."""
    plain = AugmentSettings(prob=0.5, rotate_deg=10, scale=0.1, translate_voxels=2, noise_std=0.1)
    with_gamma = dataclasses.replace(plain, gamma_max=2.0)
    torch.manual_seed(3)
    a = draw_params(4000, plain)
    torch.manual_seed(3)
    b = draw_params(4000, with_gamma)
    assert a.gamma is None
    for name in ("affine", "angles", "scale", "shift", "flip", "noise", "noise_std"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    changed = b.gamma[b.gamma != 1.0]
    assert abs(len(changed) / 4000 - 0.5) < 0.05
    assert changed.min() >= 0.5 - 1e-12 and changed.max() <= 2.0 + 1e-12
    assert abs(float((changed.log() < 0).double().mean()) - 0.5) < 0.05  # as often darker as brighter
    with pytest.raises(ConfigError, match="gamma_max"):
        config_from_dict({"finetune": {"augment": {"gamma_max": 0.5}}})


def test_blur_smooths_the_image_channel_of_the_drawn_samples_only():
    """A point in a blurred sample spreads as a Gaussian of the drawn sigma; its mass stays (edges
    replicated, not darkened); undrawn samples and the target channel are left exactly as they were."""
    x = torch.zeros(3, 2, 21, 21, 21)
    x[:, :, 10, 10, 10] = 1.0
    sigma = torch.tensor([1.5, 0.0, 0.7], dtype=torch.float64)
    out = augment_batch(x, AugmentSettings(1.0, 0, 0, 0, 0.0, blur_sigma_max=2.0), params=only(3, blur_sigma=sigma))
    assert torch.equal(out[1], x[1]) and torch.equal(out[:, 1], x[:, 1])
    for row, s in ((0, 1.5), (2, 0.7)):
        line = out[row, 0, 10, 10, 4:17].double()  # through the point
        offsets = torch.arange(-6, 7, dtype=torch.float64)
        measured = float((line * offsets ** 2).sum() / line.sum()) ** 0.5
        expected = (s ** 2 + 1 / 12) ** 0.5  # erf kernel: the Gaussian integrated over each voxel adds a box's variance
        assert abs(measured - expected) < 0.02 * expected, (row, measured, expected)
    assert float(out[0, 0, 10, 10, 10]) < float(out[2, 0, 10, 10, 10]) < 1.0
    flat = torch.full((1, 1, 8, 8, 8), 0.5)  # replicated edges: a uniform crop gets no dark rim
    blurred = augment_batch(flat, AugmentSettings(1.0, 0, 0, 0, 0.0, blur_sigma_max=2.0), params=only(1, blur_sigma=sigma[:1]))
    torch.testing.assert_close(blurred, flat)


def test_blur_is_uniform_in_its_range_and_leaves_the_other_draws_as_they_were():
    plain = AugmentSettings(prob=0.5, rotate_deg=10, scale=0.1, translate_voxels=2, noise_std=0.1, gamma_max=2.0)
    with_blur = dataclasses.replace(plain, blur_sigma_max=1.0)
    torch.manual_seed(4)
    a = draw_params(4000, plain)
    torch.manual_seed(4)
    b = draw_params(4000, with_blur)
    assert a.blur_sigma is None
    for name in ("affine", "angles", "scale", "shift", "flip", "noise", "noise_std", "gamma"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    drawn = b.blur_sigma[b.blur_sigma > 0]
    assert abs(len(drawn) / 4000 - 0.5) < 0.05
    assert drawn.max() <= 1.0 and abs(float(drawn.mean()) - 0.5) < 0.03
    with pytest.raises(ConfigError, match="blur_sigma_max"):
        config_from_dict({"finetune": {"augment": {"blur_sigma_max": -1}}})


def test_the_same_seed_gives_the_same_batch_and_the_input_is_not_modified():
    x = torch.rand(6, 2, 16, 16, 16)
    original = x.clone()
    settings = load_config("demo").pretrain.augment
    torch.manual_seed(5)
    a = augment_batch(x, settings)
    torch.manual_seed(5)
    b = augment_batch(x, settings)
    assert torch.equal(a, b) and torch.equal(x, original)
    assert not torch.equal(augment_batch(x, settings), a)
    assert augment_batch(x, dataclasses.replace(settings, prob=0.0)) is x  # nothing drawn, nothing done


def test_intensity_scale_is_one_factor_per_sample_in_range():
    x = torch.rand(64, 1, 4, 4, 4) + 0.1
    torch.manual_seed(0)
    ratio = (random_intensity_scale(x, 1.0, 0.1) / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5)
    assert ((ratio[:, 0] >= 0.9 - 1e-6) & (ratio[:, 0] <= 1.1 + 1e-6)).all() and ratio[:, 0].std() > 0.03


def test_two_view_methods_make_their_views_with_the_policy_they_are_given():
    settings = AugmentSettings(prob=1.0, rotate_deg=0, scale=0, translate_voxels=0, noise_std=0.3)
    model = build_pretext("simclr", (8, 16, 32, 64), projection_dim=16, augment=settings, intensity=0.0)
    x = torch.rand(4, 1, 1, 32, 1).expand(4, 1, 32, 32, 32).contiguous()  # left-right (D) flips leave it as it is
    torch.manual_seed(0)
    v1, v2 = model.views(x)
    assert model.augment is settings and not torch.equal(v1, v2)
    spread = (v1 - x).flatten(1).std(dim=1)
    assert (spread < 0.3 + 0.01).all() and spread.max() > 0.02  # noise of std up to 0.3 per sample, nothing else
    with pytest.raises(Exception, match="AugmentSettings"):
        build_pretext("byol", (8, 16, 32, 64), augment={"prob": 1.0})


# ------------------------------------------------------------------------------ the loader

def crops(n: int = 10, size: int = 8, residual: bool = True) -> SinusCrops:
    g = torch.Generator().manual_seed(0)
    image = 0.1 + 0.9 * torch.rand(n, 1, size, size, size, generator=g)  # no float16 subnormals: halving stays exact
    volumes = torch.cat([image, 0.5 * image], dim=1) if residual else image
    return SinusCrops(volumes.half(), np.arange(n) % 2)


def test_loader_serves_each_crop_once_per_epoch_by_index_with_its_own_target_and_label():
    data = crops(10)
    loader = CropLoader(data, 4, True, seed=0, device=CPU)
    assert len(loader) == 3 and len(CropLoader(data, 4, True, 0, CPU, drop_last=True)) == 2
    seen = []
    for batch in loader:
        assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (1, 8, 8, 8)
        assert torch.equal(batch["residual"], 0.5 * batch["image"])  # exact in float16 and float32
        for image, label in zip(batch["image"], batch["label"]):
            row = int(np.flatnonzero([torch.equal(image, v[:1].float()) for v in data.volumes])[0])
            assert int(label) == data.labels[row]
            seen.append(row)
    assert sorted(seen) == list(range(10)) and seen != list(range(10))  # every crop once, shuffled
    ordered = [b["image"] for b in CropLoader(data, 4, False, 0, CPU)]
    assert torch.equal(torch.cat(ordered), data.volumes[:, :1].float())


def test_a_training_loader_never_serves_a_lone_sample_that_batch_norm_cannot_train_on():
    """Fine-tuning at 32^3 (the demo's crops) crashed when its training set held one sinus more than a
    multiple of the batch size: the ResNet's deepest maps are one voxel, and batch norm cannot train
    on a batch of one. ``drop_single`` drops exactly that last batch, and no other."""
    from SinusAnomalyLib.models import SinusClassifier

    classifier = SinusClassifier(encoder_widths=(4, 8, 8, 8)).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        classifier(torch.rand(1, 1, 32, 32, 32))
    for n, batches in ((17, [16]), (18, [16, 2]), (16, [16]), (33, [16, 16]), (1, [1])):
        loader = CropLoader(crops(n), min(16, n), True, 0, CPU, drop_single=True)
        assert [len(batch["label"]) for batch in loader] == batches, n
    assert [len(b["label"]) for b in CropLoader(crops(17), 16, True, 0, CPU)] == [16, 1]  # without it


def test_loader_order_and_augmentation_follow_the_seeds():
    data = crops(12)
    settings = AugmentSettings(prob=0.5, rotate_deg=10, scale=0.1, translate_voxels=1, noise_std=0.1)

    def epoch(loader_seed: int, torch_seed: int) -> list[torch.Tensor]:
        loader = CropLoader(data, 4, True, loader_seed, CPU, settings)
        torch.manual_seed(torch_seed)
        return [b["image"] for b in loader]

    a, b = epoch(0, 1), epoch(0, 1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, epoch(0, 2)))  # other augmentation
    assert not all(torch.equal(u, v) for u, v in zip(a, epoch(1, 1)))  # other order


def test_loader_under_a_distributed_sampler_keeps_its_semantics(monkeypatch):
    """Two ranks split an epoch between them (DistributedSampler), and set_epoch changes the order."""
    data = crops(10, residual=False)
    orders = {}
    for rank in (0, 1):
        monkeypatch.setattr(runtime, "world_size", lambda: 2)
        monkeypatch.setattr(runtime, "rank", lambda rank=rank: rank)
        loader = CropLoader(data, 2, True, seed=3, device=CPU)
        assert loader.sampler is not None and len(loader) == 3
        orders[rank] = loader.order().tolist()
        loader.sampler.set_epoch(1)
        assert loader.order().tolist() != orders[rank]
    assert sorted(orders[0] + orders[1]) == list(range(10))


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3, 4)))


class Stop(Exception):
    pass


def train(run_dir, stop_at: int | None = None):
    torch.manual_seed(0)
    model = Regressor()
    data = crops(12)
    loader = CropLoader(data, 4, True, 7, CPU, AugmentSettings(0.5, 10, 0.1, 1, 0.1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    calls = {"n": 0}

    def step(net, batch, device):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise Stop
        return nn.functional.mse_loss(net(batch["image"]).squeeze(1), batch["residual"].mean(dim=(1, 2, 3, 4)))

    fit(model, loader, None, step, 3, optimizer, None, CPU, Checkpointer(run_dir), resume=True, progress=False,
        log=lambda _: None, seed=11)
    return model.state_dict()


def test_resumed_training_with_augmentation_equals_the_uninterrupted_run(tmp_path):
    full = train(tmp_path / "full")
    with pytest.raises(Stop):
        train(tmp_path / "cut", stop_at=5)  # in the second epoch: one checkpoint written
    resumed = train(tmp_path / "cut")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
