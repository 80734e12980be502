"""Baseline self-supervised methods: each trains the classifier's encoder and hands it over intact."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import ContrastiveLoss

from SinusAnomalyLib.errors import SinusAnomalyError
from SinusAnomalyLib.models import ResNet18Encoder, SinusClassifier
from SinusAnomalyTraining import pretext
from SinusAnomalyTraining.pretext import joint_embedding  # where SimSiam looks its loss up (patched below)
from SinusAnomalyTraining.pretext import (
    PRETEXT_METHODS,
    BYOLPretext,
    DenoisingPretext,
    PretextError,
    PretrainedWeightsError,
    SimSiamPretext,
    SparKPretext,
    build_pretext,
    load_medicalnet_encoder,
)

WIDTHS = (8, 16, 32, 64)
SMALL = {  # narrow heads so the whole file runs in seconds on CPU
    "ae": {},
    "dae": {},
    "simclr": {"projection_dim": 32},
    "byol": {"projection_dim": 32, "hidden_dim": 64},
    "simsiam": {"projection_dim": 32},
    "spark": {},
}


pytestmark = pytest.mark.usefixtures("two_torch_threads")


def batch(seed: int = 0, b: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, size, size, size, generator=g)


def small(name: str, **options) -> pretext.PretextModel:
    torch.manual_seed(0)
    return build_pretext(name, WIDTHS, **{**SMALL[name], **options})


def encoder_copy(model) -> dict:
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


# ------------------------------------------------------------------------------ every method

@pytest.mark.parametrize("name", sorted(PRETEXT_METHODS))
def test_one_step_trains_the_encoder_and_it_loads_into_the_classifier(name):
    model = small(name)
    model.train()
    before = encoder_copy(model)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    torch.manual_seed(1)
    loss = model.loss(batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.after_optimizer_step(1, 10)
    after = model.encoder.state_dict()
    unchanged = [k for k, _ in model.encoder.named_parameters() if torch.equal(before[k], after[k])]
    assert unchanged == []  # every encoder parameter got a gradient and moved

    state = model.encoder_state()
    assert state and all(k.startswith("encoder.") for k in state)
    classifier = SinusClassifier(encoder_widths=WIDTHS)
    classifier.load_encoder(state, prefix="encoder.")
    for key, value in classifier.encoder.state_dict().items():
        assert torch.equal(value, state[f"encoder.{key}"])
    # the full state dict (what a checkpoint holds) loads the same way
    other = SinusClassifier(encoder_widths=WIDTHS)
    other.load_encoder(model.state_dict(), prefix="encoder.")
    assert all(torch.equal(v, state[f"encoder.{k}"]) for k, v in other.encoder.state_dict().items())



def test_build_pretext_rejects_unknown_names_and_options():
    with pytest.raises(PretextError, match="unknown pretraining method"):
        build_pretext("mae", WIDTHS)
    with pytest.raises(PretextError, match="cannot build"):
        build_pretext("simclr", WIDTHS, mask_ratio=0.5)
    assert isinstance(build_pretext("SimCLR", WIDTHS, projection_dim=8), pretext.SimCLRPretext)
    assert (PRETEXT_METHODS["dae"], PRETEXT_METHODS["byol"], PRETEXT_METHODS["simsiam"], PRETEXT_METHODS["spark"]) == (
        DenoisingPretext, BYOLPretext, SimSiamPretext, SparKPretext)
    with pytest.raises(PretextError, match="multiples of 32"):
        small("ae").loss(torch.rand(2, 1, 24, 24, 24))


# ------------------------------------------------------------------------------ AE / DAE

def test_dae_target_is_the_clean_image_and_noise_is_always_applied():
    model = small("dae")
    assert model.noise_std == 0.6
    x = batch(4)
    torch.manual_seed(7)
    loss = model.loss(x)
    torch.manual_seed(7)
    noisy, target = model.make_pair(x)
    assert torch.equal(target, x)
    assert abs(float((noisy - x).std()) - 0.6) < 0.02
    recon = model.reconstruct(noisy)
    assert torch.allclose(loss, F.l1_loss(recon, x), atol=1e-6)
    assert not torch.allclose(loss, F.l1_loss(recon, noisy), atol=1e-3)
    first, _ = model.make_pair(x)
    second, _ = model.make_pair(x)
    assert not torch.equal(first, second) and not torch.equal(first, x)


def test_ae_reconstructs_its_own_input_through_a_skipless_decoder():
    model = small("ae")
    x = batch(5)
    inputs, target = model.make_pair(x)
    assert torch.equal(inputs, x) and torch.equal(target, x)
    with torch.no_grad():
        recon = model.reconstruct(x)
    assert recon.shape == x.shape and float(recon.min()) >= 0 and float(recon.max()) <= 1
    assert torch.allclose(model.loss(x), F.l1_loss(recon, x), atol=1e-6)
    # no skip connections: the decoder sees only the deepest map
    assert not any("skip" in name for name, _ in model.decoder.named_modules())


# ------------------------------------------------------------------------------ SimCLR

def test_nt_xent_matches_monai_and_uses_all_negatives():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 16), torch.randn(6, 16)
    for temperature in (0.1, 0.5):
        ours = pretext.nt_xent_loss(z1, z2, temperature)
        assert torch.allclose(ours, ContrastiveLoss(temperature=temperature)(z1, z2), atol=1e-5)
    # hand-computed for anchor 0: positive is row 6, negatives are all 10 other rows but itself
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sims = z @ z.t() / 0.1
    others = [j for j in range(12) if j != 0]
    expected_0 = -sims[0, 6] + torch.logsumexp(sims[0, others], 0)
    per_anchor = F.cross_entropy(sims.masked_fill(torch.eye(12, dtype=torch.bool), float("-inf")),
                                 torch.tensor([6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]), reduction="none")
    assert torch.allclose(per_anchor[0], expected_0, atol=1e-5)
    # identical views, orthogonal images: the loss is at its floor for that temperature
    eye = torch.eye(4, 8)
    floor = -math.log(math.exp(10) / (math.exp(10) + 6))
    assert abs(float(pretext.nt_xent_loss(eye, eye, 0.1)) - floor) < 1e-4
    with pytest.raises(PretextError):
        pretext.nt_xent_loss(z1[:1], z2[:1])


# ------------------------------------------------------------------------------ BYOL

def test_byol_momentum_schedule_endpoints():
    assert pretext.byol_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert pretext.byol_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert pretext.byol_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert pretext.byol_momentum(200, 100, 0.99) == pytest.approx(1.0)
    model = small("byol")
    assert model.momentum(0, 10) == pytest.approx(model.tau_base)


def test_byol_target_moves_only_by_ema():
    model = small("byol", tau_base=0.9)
    model.train()
    target_names = [n for n, _ in model.named_parameters() if n.startswith("target_")]
    assert target_names and all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("target_"))
    # the target starts as a copy of the online network
    for (_, o), (_, t) in zip(model.encoder.named_parameters(), model.target_encoder.named_parameters()):
        assert torch.equal(o, t)
    optimizer = torch.optim.SGD(model.online_parameters(), lr=0.5)
    target_before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("target_")}
    torch.manual_seed(3)
    loss = model.loss(batch())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    params = dict(model.named_parameters())
    assert all(params[n].grad is None for n in target_names)
    assert all(torch.equal(params[n], target_before[n]) for n in target_names)
    assert model.predictor[0].weight.grad is not None
    online = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("target_")}
    assert any(not torch.equal(online[n.replace("target_", "")], target_before[n]) for n in target_names)
    step, total = 3, 10
    tau = model.update_target(step, total)
    assert tau == pytest.approx(pretext.byol_momentum(step, total, 0.9))
    for n in target_names:
        expected = tau * target_before[n] + (1 - tau) * online[n.replace("target_", "")]
        assert torch.allclose(params[n], expected, atol=1e-7, rtol=1e-6), n
    # at the end of the schedule (tau = 1) the target no longer moves
    frozen = {n: params[n].detach().clone() for n in target_names}
    model.update_target(total, total)
    assert all(torch.equal(params[n], frozen[n]) for n in target_names)


def test_byol_loss_is_symmetric_two_minus_two_cos():
    p, z = torch.randn(4, 8), torch.randn(4, 8)
    expected = (2 - 2 * F.cosine_similarity(p, z)).mean()
    assert torch.allclose(pretext.byol_regression_loss(p, z), expected)
    assert float(pretext.byol_regression_loss(z, z)) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------ SimSiam

def test_simsiam_stop_gradient_on_the_target_branch():
    z = torch.randn(4, 8, requires_grad=True)
    p = torch.randn(4, 8, requires_grad=True)
    pretext.negative_cosine_similarity(p, z).backward()
    assert z.grad is None and p.grad is not None

    model = small("simsiam")
    model.train()
    seen = []
    original = joint_embedding.negative_cosine_similarity

    def spy(p_, z_):
        seen.append(z_)
        return original(p_, z_)

    x = batch(6)

    def grads(loss_fn):
        model.zero_grad()
        torch.manual_seed(11)
        v1, v2 = model.views(x)
        z_, p_ = model.branches(torch.cat([v1, v2]))
        z1, z2 = z_.chunk(2)
        p1, p2 = p_.chunk(2)
        loss_fn(p1, p2, z1, z2).backward()
        return {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}

    explicit = grads(lambda p1, p2, z1, z2: -0.5 * (F.cosine_similarity(p1, z2.detach()).mean()
                                                    + F.cosine_similarity(p2, z1.detach()).mean()))
    no_stop = grads(lambda p1, p2, z1, z2: -0.5 * (F.cosine_similarity(p1, z2).mean()
                                                   + F.cosine_similarity(p2, z1).mean()))
    assert any(not torch.allclose(no_stop[n], explicit[n], atol=1e-6) for n in explicit)
    # the model's own loss (calling the model, as DDP does) gives the explicit detach's gradients;
    # the loss function is handed the live projections and cuts their gradient itself
    joint_embedding.negative_cosine_similarity = spy
    try:
        model.zero_grad()
        torch.manual_seed(11)
        model(x).backward()
    finally:
        joint_embedding.negative_cosine_similarity = original
    assert len(seen) == 2 and all(t.requires_grad for t in seen)
    assert {n for n, q in model.named_parameters() if q.grad is not None} == set(explicit)
    for name, q in model.named_parameters():
        assert torch.allclose(q.grad, explicit[name], atol=1e-6, rtol=1e-4), name


# ------------------------------------------------------------------------------ SparK

def test_spark_mask_ratio_and_input_zeroing():
    model = small("spark")
    x = batch(7) + 0.1
    torch.manual_seed(0)
    visible = model.random_mask(x)
    assert visible.shape == (4, 1, 4, 4, 4) and visible.dtype == torch.bool
    assert visible.flatten(1).sum(1).tolist() == [64 - round(0.6 * 64)] * 4
    assert not torch.equal(visible[0], visible[1])  # a mask per sample
    seen = {}
    handle = model.encoder.conv1.register_forward_pre_hook(lambda m, inp: seen.setdefault("x", inp[0].detach().clone()))
    try:
        model.loss(x, visible)
    finally:
        handle.remove()
    voxels = model.voxel_mask(visible, x)
    assert torch.equal(seen["x"][~voxels], torch.zeros_like(x[~voxels]))
    assert torch.equal(seen["x"][voxels], x[voxels])
    # masked content never reaches the features; masked positions are zero at every level
    changed = torch.where(voxels, x, torch.rand_like(x))
    model.eval()
    with torch.no_grad():
        a = model.sparse_features(x, visible)
        b = model.sparse_features(changed, visible)
    for fa, fb in zip(a, b):
        assert torch.equal(fa, fb)
        keep = pretext.resample_mask(visible, fa.shape[2:]).expand_as(fa)
        assert torch.equal(fa[~keep], torch.zeros_like(fa[~keep]))
    # the hooks are gone: the encoder is dense again
    assert all(not m._forward_hooks and "forward" not in vars(m) for m in model.encoder.modules())


def test_spark_decoder_has_three_upsampling_and_three_conv_blocks():
    """The paper's light decoder: 3 upsampling + 3 conv blocks from 1/32 to 1/4 resolution, then a
    linear 1x1x1 head that places each position's 4^3 voxels (no further upsampling or conv block)."""
    model = small("spark", patch_size=4)
    assert len(model.decoder) == 3
    assert all(isinstance(b.upsample, torch.nn.ConvTranspose3d) and b.upsample.stride == (2, 2, 2) for b in model.decoder)
    assert [sum(isinstance(m, torch.nn.Conv3d) for m in b.conv) for b in model.decoder] == [2, 2, 2]
    upsampling = [m for m in model.modules() if isinstance(m, (torch.nn.ConvTranspose3d, torch.nn.Upsample))]
    assert len(upsampling) == 3
    assert model.head.kernel_size == (1, 1, 1) and model.head.out_channels == 4**3
    x = batch(5, b=2, size=64)
    torch.manual_seed(0)
    visible = model.random_mask(x)
    features = model.sparse_features(x, visible)
    assert features[2].shape[2:] == (8, 8, 8) and features[-1].shape[2:] == (2, 2, 2)
    seen = []
    handles = [b.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:]))) for b in model.decoder]
    try:
        out = model.reconstruct(x, visible)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [(4, 4, 4), (8, 8, 8), (16, 16, 16)]  # 1/16, 1/8, 1/4 of the 64^3 input
    assert out.shape == x.shape


def test_spark_targets_are_normalised_per_patch():
    x = batch(3, b=2, size=32) * 0.5 + 0.2
    rows = pretext.normalised_patches(x, 8)  # (B, L, p^3): 4^3 patches of 8^3 voxels
    assert rows.shape == (2, 64, 512)
    assert torch.allclose(rows.mean(-1), torch.zeros(2, 64), atol=1e-5)
    assert torch.allclose(rows.var(-1), torch.ones(2, 64), atol=1e-3)
    # the first row is the corner patch, standardised by its own statistics
    corner = x[0, 0, :8, :8, :8].flatten()
    assert torch.allclose(rows[0, 0].sort().values, ((corner - corner.mean()) / (corner.var() + 1e-6).sqrt()).sort().values,
                          atol=1e-5)
    # so the loss does not change when one patch's intensities are scaled and shifted
    prediction = torch.randn_like(x)
    masked = torch.ones(2, 1, 4, 4, 4, dtype=torch.bool)
    changed = x.clone()
    changed[:, :, 8:16, 0:8, 16:24] = 3.0 * changed[:, :, 8:16, 0:8, 16:24] - 0.7
    base = pretext.masked_patch_loss(prediction, x, masked, 8)
    assert torch.allclose(pretext.masked_patch_loss(prediction, changed, masked, 8), base, atol=1e-5)
    raw = ((prediction - x) ** 2).mean()  # not what SparK compares with
    assert not torch.allclose(base, raw, atol=1e-2)


def test_spark_loss_counts_masked_patches_only():
    model = small("spark")
    model.eval()
    x = batch(8)
    torch.manual_seed(1)
    visible = model.random_mask(x)  # (4, 1, 4, 4, 4): 8^3 patches of the 32^3 crop
    voxels = model.voxel_mask(visible, x)
    with torch.no_grad():
        prediction = model.reconstruct(x, visible)
        base = pretext.masked_patch_loss(prediction, x, ~visible, 8)
        assert torch.allclose(model.loss(x, visible), base, atol=1e-6)
        # predictions (or the image) on visible patches do not count; on masked patches they do
        other = torch.rand_like(x)
        assert torch.equal(pretext.masked_patch_loss(torch.where(voxels, other, prediction), x, ~visible, 8), base)
        assert torch.equal(pretext.masked_patch_loss(prediction, torch.where(voxels, other, x), ~visible, 8), base)
        assert not torch.allclose(pretext.masked_patch_loss(torch.where(~voxels, other, prediction), x, ~visible, 8), base)
        # the mean over masked patches of each patch's mean squared error to its normalised target
        target = pretext.normalised_patches(x, 8)
        errors = []
        for b in range(x.shape[0]):
            for i, j, k in (~visible[b, 0]).nonzero().tolist():
                patch = prediction[b, 0, 8 * i:8 * i + 8, 8 * j:8 * j + 8, 8 * k:8 * k + 8].flatten()
                truth = x[b, 0, 8 * i:8 * i + 8, 8 * j:8 * j + 8, 8 * k:8 * k + 8].flatten()
                truth = (truth - truth.mean()) / (truth.var() + 1e-6).sqrt()
                errors.append(((patch - truth) ** 2).mean())
        assert len(errors) == int((~visible).sum()) == 4 * round(0.6 * 64)
        assert torch.allclose(base, torch.stack(errors).mean(), atol=1e-5)
        assert target.shape == (4, 64, 512)


def test_spark_batchnorm_statistics_come_from_visible_positions():
    model = small("spark")
    model.train()
    x = batch(9)
    torch.manual_seed(2)
    visible = model.random_mask(x)
    model.sparse_features(x, visible)
    stem = model.encoder.conv1(x * model.voxel_mask(visible, x))
    keep = pretext.resample_mask(visible, stem.shape[2:])[:, 0]
    rows = stem.detach().movedim(1, -1)[keep]
    momentum = model.encoder.bn1.momentum
    expected = (1 - momentum) * torch.zeros_like(rows[0]) + momentum * rows.mean(0)
    assert torch.allclose(model.encoder.bn1.running_mean, expected, atol=1e-6)


# ------------------------------------------------------------------------------ MedicalNet

def medicalnet_state(seed: int = 0) -> tuple[dict, ResNet18Encoder]:
    torch.manual_seed(seed)
    source = ResNet18Encoder(shortcut_type="A", widths=WIDTHS)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.randn(4, WIDTHS[-1], 2, 2, 2)
    state["module.conv_seg.0.bias"] = torch.randn(4)
    return state, source


def test_medicalnet_weights_load_exactly(tmp_path):
    state, source = medicalnet_state()
    path = tmp_path / "resnet_18.pth"
    torch.save({"state_dict": state}, path)
    encoder = ResNet18Encoder(shortcut_type="A", widths=WIDTHS)
    report = load_medicalnet_encoder(path, encoder)
    for key, value in source.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key
    assert report["loaded"] == len(source.state_dict())
    assert report["ignored"] == ["module.conv_seg.0.bias", "module.conv_seg.0.weight"]
    assert report["missing"] == [] and report["unexpected"] == []
    classifier = SinusClassifier(shortcut_type="A", encoder_widths=WIDTHS)
    classifier.load_encoder(encoder.state_dict(), prefix="")
    # without num_batches_tracked counters (older files) the rest still loads; they are reported
    older = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": older}, path)
    report = load_medicalnet_encoder(path, ResNet18Encoder(shortcut_type="A", widths=WIDTHS))
    assert report["missing"] and all(k.endswith("num_batches_tracked") for k in report["missing"])


def test_medicalnet_bad_files_raise_naming_file_and_key(tmp_path):
    state, _ = medicalnet_state()
    encoder = ResNet18Encoder(shortcut_type="A", widths=WIDTHS)
    pristine = {k: v.clone() for k, v in encoder.state_dict().items()}

    missing = dict(state)
    del missing["module.layer2.1.conv1.weight"]
    path = tmp_path / "missing.pth"
    torch.save({"state_dict": missing}, path)
    with pytest.raises(PretrainedWeightsError, match=r"missing.pth.*layer2\.1\.conv1\.weight"):
        load_medicalnet_encoder(path, encoder)

    wrong = dict(state)
    wrong["module.layer3.0.bn1.weight"] = torch.ones(5)
    path = tmp_path / "shape.pth"
    torch.save({"state_dict": wrong}, path)
    with pytest.raises(PretrainedWeightsError, match=r"shape.pth.*layer3\.0\.bn1\.weight"):
        load_medicalnet_encoder(path, encoder)
    assert all(torch.equal(v, pristine[k]) for k, v in encoder.state_dict().items())  # left unchanged

    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="notes.pth.*not a readable PyTorch checkpoint"):
        load_medicalnet_encoder(path, encoder)
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(PretrainedWeightsError, match="list.pth.*not a MedicalNet checkpoint"):
        load_medicalnet_encoder(path, encoder)
    with pytest.raises(PretrainedWeightsError, match="absent.pth.*no such file"):
        load_medicalnet_encoder(tmp_path / "absent.pth", encoder)
    assert issubclass(PretrainedWeightsError, SinusAnomalyError)

    # a shortcut-B file into a shortcut-A encoder: the downsample tensors are named, with the fix
    source_b = ResNet18Encoder(shortcut_type="B", widths=WIDTHS)
    path = tmp_path / "shortcut_b.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source_b.state_dict().items()}}, path)
    with pytest.raises(PretrainedWeightsError, match=r"layer2\.0\.downsample\.0\.weight.*shortcut_type='B'"):
        load_medicalnet_encoder(path, encoder)
    report = load_medicalnet_encoder(path, ResNet18Encoder(shortcut_type="B", widths=WIDTHS))
    assert report["unexpected"] == [] and report["ignored"] == []
