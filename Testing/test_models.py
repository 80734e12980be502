"""Networks: shapes, sizes, the ResNet18 encoder's layout, encoder transplant, parameter groups."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from SinusAnomalyLib.errors import SinusAnomalyError
from SinusAnomalyLib.models import (
    ConvAutoencoder,
    ModelError,
    NetworkSpec,
    ResidualUNet,
    ResNet18Encoder,
    SinusClassifier,
    count_parameters,
    encoder_state_from,
    load_pretrained_encoder,
    parameter_groups,
)

STAGES = ("layer1", "layer2", "layer3", "layer4")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


# Building a ResNet18 takes most of a second on 2 cores: build each network once per module.
@pytest.fixture(scope="module")
def unet() -> ResidualUNet:
    torch.manual_seed(1)
    return ResidualUNet()


@pytest.fixture(scope="module")
def classifier() -> SinusClassifier:
    torch.manual_seed(2)
    return SinusClassifier()


@pytest.fixture(scope="module")
def cae() -> ConvAutoencoder:
    return ConvAutoencoder()


def crops(batch: int, size: int) -> torch.Tensor:
    return torch.rand(batch, 1, size, size, size)


def test_core_imports_no_gui_toolkit():
    """Every module of SinusAnomalyLib imports in a fresh interpreter without slicer, qt, ctk or vtk."""
    import subprocess
    from pathlib import Path

    lib = Path(__file__).resolve().parents[1] / "SinusAnomaly" / "SinusAnomalyLib"
    modules = sorted(".".join(p.relative_to(lib).with_suffix("").parts) for p in lib.rglob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import SinusAnomalyLib.{m}\n" for m in modules)
            + "print(sorted({'slicer', 'qt', 'ctk', 'vtk'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- autoencoder


def test_cae_default_size_and_latent(cae):
    n = count_parameters(cae)
    assert 2_500_000 <= n <= 3_000_000, n
    assert cae.latent_dim == 512
    assert cae.encoder.to_latent.in_features == 4 * 8**3 == 2048
    x = crops(1, 64)
    with torch.no_grad():
        z = cae.eval().encode(x)
        y = cae.decode(z)
    assert z.shape == (1, 512)
    assert y.shape == x.shape
    # sigmoid output: the reconstruction lives in the inputs' range
    assert 0.0 < float(y.min()) <= float(y.max()) < 1.0


def test_cae_stage_layout(cae):
    convs = [m for m in cae.encoder.stages.modules() if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 16), (16, 32), (32, 64)]
    assert all(c.kernel_size == (5, 5, 5) and c.stride == (2, 2, 2) and c.padding == (2, 2, 2) for c in convs)
    leaky = [m for m in cae.modules() if isinstance(m, nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == 0.01 for m in leaky)
    dec = [m for m in cae.decoder.stages.modules() if isinstance(m, nn.Conv3d)]
    assert [(c.in_channels, c.out_channels) for c in dec] == [(64, 32), (32, 16), (16, 1)]
    assert all(c.kernel_size == (5, 5, 5) and c.stride == (1, 1, 1) for c in dec)
    ups = [m for m in cae.decoder.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 3 and all(u.mode == "trilinear" for u in ups)


@pytest.mark.parametrize("in_size, channels, latent", [(32, (16, 32, 64), 512), (40, (8, 16, 32), 64)])
def test_cae_other_sizes(in_size, channels, latent):
    model = ConvAutoencoder(in_size=in_size, channels=channels, latent_dim=latent)
    x = crops(2, in_size)
    assert model.encode(x).shape == (2, latent)
    assert model(x).shape == x.shape


def test_cae_linear_output_option():
    model = ConvAutoencoder(in_size=16, channels=(4, 8), latent_dim=8, out_activation=None)
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert model(crops(2, 16)).shape == (2, 1, 16, 16, 16)


def test_cae_rejects_bad_geometry():
    with pytest.raises(ModelError, match="multiple of 8"):
        ConvAutoencoder(in_size=36)
    model = ConvAutoencoder(in_size=32, channels=(4, 8, 8), latent_dim=16)
    with pytest.raises(ModelError, match=r"\(B, 1, 32, 32, 32\)"):
        model(crops(1, 64))


# ----------------------------------------------------------------------------- ResNet18 U-Net


def test_unet_shapes(unet):
    unet.eval()
    with torch.no_grad():
        assert unet(crops(1, 64)).shape == (1, 1, 64, 64, 64)
        assert unet(crops(2, 32)).shape == (2, 1, 32, 32, 32)
    with pytest.raises(ModelError, match="multiples of 32"):
        unet(crops(1, 40))


def test_unet_encoder_layout(unet):
    encoder = unet.encoder
    assert isinstance(encoder, ResNet18Encoder)
    assert encoder.conv1.kernel_size == (7, 7, 7)
    assert encoder.conv1.stride == (2, 2, 2)
    assert encoder.conv1.in_channels == 1
    widths, sizes = {}, {}

    def recorder(name):
        def record(_module, _inputs, output):
            widths[name], sizes[name] = output.shape[1], output.shape[2]

        return record

    hooks = [getattr(encoder, name).register_forward_hook(recorder(name)) for name in STAGES]
    try:
        with torch.no_grad():
            features = encoder.eval()(crops(1, 64))
    finally:
        for hook in hooks:
            hook.remove()
    assert [widths[name] for name in STAGES] == [64, 128, 256, 512]
    assert [sizes[name] for name in STAGES] == [16, 8, 4, 2]
    assert [f.shape[1] for f in features] == list(encoder.feature_channels) == [64, 64, 128, 256, 512]
    # two basic blocks per stage: ResNet18
    assert [len(getattr(encoder, name)) for name in STAGES] == [2, 2, 2, 2]
    # the U-Net's upsampling is trilinear and its decoder uses every skip connection
    ups = [m for m in unet.decoder.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 5 and all(u.mode == "trilinear" for u in ups)


def test_shortcut_a_is_monais_stock_resnet18():
    from monai.networks.nets.resnet import ResNetFeatures

    ours = ResNet18Encoder(shortcut_type="A").state_dict()
    stock = ResNetFeatures("resnet18", pretrained=False).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in stock.items()}
    with pytest.raises(ModelError, match="shortcut_type"):
        ResNet18Encoder(shortcut_type="C")


# ----------------------------------------------------------------------------- classifier


def test_classifier_shapes_and_head(classifier):
    classifier.eval()
    with torch.no_grad():
        assert classifier(crops(1, 64)).shape == (1, 2)
        assert classifier(crops(3, 32)).shape == (3, 2)
        assert classifier.embed(crops(2, 32)).shape == (2, 512)
    linears = [m for m in classifier.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 256), (256, 2)]
    assert isinstance(classifier.head[1], nn.ReLU)


def test_classifier_encoder_matches_unet_encoder(unet, classifier):
    assert type(classifier.encoder) is type(unet.encoder)
    ours = {k: v.shape for k, v in classifier.encoder.state_dict().items()}
    theirs = {k[len("encoder.") :]: v.shape for k, v in unet.state_dict().items() if k.startswith("encoder.")}
    assert ours == theirs


# ----------------------------------------------------------------------------- transplant


def _pretrained_state(unet: ResidualUNet) -> dict[str, torch.Tensor]:
    """The U-Net's state with every encoder tensor made distinctive (BatchNorm statistics too)."""
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    generator = torch.Generator().manual_seed(3)
    for key, value in state.items():
        if key.startswith("encoder.") and value.is_floating_point():
            state[key] = torch.rand(value.shape, generator=generator) + 0.5
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(17)
    return state


def test_transplant_copies_every_encoder_tensor(unet):
    classifier = SinusClassifier()
    state = _pretrained_state(unet)
    head_before = {k: v.clone() for k, v in classifier.head.state_dict().items()}
    load_pretrained_encoder(classifier, state)
    loaded = classifier.encoder.state_dict()
    assert len(loaded) == sum(k.startswith("encoder.") for k in state)
    for key, value in loaded.items():
        assert torch.equal(value, state["encoder." + key]), key
    for key, value in classifier.head.state_dict().items():
        assert torch.equal(value, head_before[key]), key
    # the method on the classifier and a wrapped checkpoint prefix do the same
    other = SinusClassifier()
    other.load_encoder({"model." + k: v for k, v in state.items()}, prefix="model.encoder.")
    assert all(torch.equal(v, loaded[k]) for k, v in other.encoder.state_dict().items())


def _assert_rejected(classifier, state, *names):
    before = {k: v.clone() for k, v in classifier.encoder.state_dict().items()}
    with pytest.raises(ModelError) as caught:
        load_pretrained_encoder(classifier, state)
    for name in names:
        assert name in str(caught.value)
    assert isinstance(caught.value, (SinusAnomalyError, ValueError))
    # nothing was half-loaded
    assert all(torch.equal(v, before[k]) for k, v in classifier.encoder.state_dict().items())


def test_transplant_refuses_missing_extra_and_misshapen(unet, classifier):
    good = _pretrained_state(unet)

    missing = dict(good)
    del missing["encoder.layer3.1.bn2.running_var"]
    _assert_rejected(classifier, missing, "missing", "layer3.1.bn2.running_var")

    extra = dict(good)
    extra["encoder.layer5.0.conv1.weight"] = torch.zeros(1)
    _assert_rejected(classifier, extra, "unexpected", "layer5.0.conv1.weight")

    wrong = dict(good)
    wrong["encoder.conv1.weight"] = torch.zeros(64, 1, 3, 3, 3)
    _assert_rejected(classifier, wrong, "shape", "conv1.weight", "(64, 1, 7, 7, 7)", "(64, 1, 3, 3, 3)")

    decoder_only = {k: v for k, v in good.items() if not k.startswith("encoder.")}
    _assert_rejected(classifier, decoder_only, "no weights with the prefix 'encoder.'")


def test_transplant_refuses_other_shortcut_type(classifier):
    state = {"encoder." + k: v for k, v in ResNet18Encoder(shortcut_type="A").state_dict().items()}
    _assert_rejected(classifier, state, "missing", "layer2.0.downsample.0.weight")


def test_encoder_state_from_strips_prefix():
    state = {"encoder.a": torch.zeros(1), "decoder.b": torch.ones(1)}
    assert list(encoder_state_from(state)) == ["a"]
    assert sorted(encoder_state_from(state, prefix="")) == ["decoder.b", "encoder.a"]


# ----------------------------------------------------------------------------- parameter groups

_NORMS = (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


@pytest.mark.parametrize("which", ["cae", "unet", "classifier"])
def test_parameter_groups(which, request):
    model = request.getfixturevalue(which)
    groups = parameter_groups(model, weight_decay=1e-4)
    decay, no_decay = groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert not decay["lars_exclude"] and no_decay["lars_exclude"]
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))
    assert set(all_ids) == {id(p) for p in model.parameters()}
    n_norm = n_bias = n_weight = 0
    for module in model.modules():
        if isinstance(module, _NORMS):
            for p in module.parameters(recurse=False):
                assert id(p) in no_decay_ids
                n_norm += 1
        elif isinstance(module, (nn.Conv3d, nn.Linear)):
            assert id(module.weight) in decay_ids
            n_weight += 1
            if module.bias is not None:
                assert id(module.bias) in no_decay_ids
                n_bias += 1
    assert n_norm and n_weight and len(no_decay_ids) == n_norm + n_bias
    assert len(decay_ids) == n_weight
    # an optimiser accepts the groups as they are
    torch.optim.AdamW(groups, lr=1e-4)


def test_parameter_groups_skip_frozen_and_shared():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.BatchNorm1d(3), shared)
    model[1].weight.requires_grad_(False)
    groups = parameter_groups(model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted({id(shared.weight), id(shared.bias), id(model[1].bias)})


# ----------------------------------------------------------------------------- training step


def _assert_backward(model: nn.Module, x: torch.Tensor, loss_of) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = loss_of(model(x), x)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters())


def test_backward_cae():
    model = ConvAutoencoder(in_size=32)
    _assert_backward(model, crops(2, 32), lambda y, x: (y - x).abs().mean())


def test_backward_unet(unet):
    target = torch.rand(2, 1, 32, 32, 32)
    _assert_backward(unet, crops(2, 32), lambda y, _x: nn.functional.binary_cross_entropy_with_logits(y, target))


def test_backward_classifier(classifier):
    labels = torch.tensor([0, 1])
    _assert_backward(classifier, crops(2, 32), lambda y, _x: nn.functional.cross_entropy(y, labels))


# ----------------------------------------------------------------------------- factory


def test_network_spec_builds_every_network_with_its_settings():
    spec = NetworkSpec(cae_crop_size=32, encoder_widths=(8, 16, 32, 64), cae_channels=(4, 8), cae_latent_dim=8)
    cae = spec.cae()
    assert isinstance(cae, ConvAutoencoder) and cae.in_size == 32
    x = torch.rand(2, 1, 32, 32, 32)
    assert spec.unet()(x).shape == x.shape
    assert spec.classifier()(x).shape == (2, 2)
    assert spec.classifier().encoder.shortcut_type == "B"
    # MedicalNet's layout: parameter-free shortcuts, so no downsample weights to load or miss
    medicalnet = NetworkSpec(32, (8, 16, 32, 64), (4, 8), 8, shortcut_type="A").classifier()
    assert medicalnet.encoder.shortcut_type == "A"
    assert not any(".downsample." in key for key in medicalnet.state_dict())


def test_narrow_encoder_widths_for_cpu_runs():
    """The demo's quarter-width networks keep the structure and transplant like the full ones."""
    widths = (16, 32, 64, 128)
    unet = ResidualUNet(encoder_widths=widths)
    classifier = SinusClassifier(encoder_widths=widths)
    x = torch.rand(2, 1, 32, 32, 32)
    assert unet(x).shape == x.shape
    assert classifier(x).shape == (2, 2)
    assert classifier.encoder.feature_channels == (16, 16, 32, 64, 128)
    classifier.load_encoder(unet.state_dict())
    for key, value in unet.encoder.state_dict().items():
        assert torch.equal(classifier.encoder.state_dict()[key], value)
    assert count_parameters(classifier) < count_parameters(SinusClassifier()) / 10
