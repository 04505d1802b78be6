"""Tests for csrs.models: shapes, parameter counts, the normalisation layer, input validation."""

import pytest
import torch
from torch import nn

from csrs.models import ARCHITECTURES, Normalize, build_model, count_parameters

# A typical input shape per architecture, kept small so that CPU forward passes are fast.
TYPICAL_SHAPES = {
    "linear": (30,),
    "mlp": (30,),
    "digits-cnn": (1, 8, 8),
    "small-cnn": (3, 16, 16),
    "cifar-resnet20": (3, 32, 32),
    "cifar-resnet56": (3, 32, 32),
    "cifar-resnet110": (3, 32, 32),
    "resnet18": (3, 64, 64),
    "resnet50": (3, 64, 64),
    "ham-resnet56": (3, 64, 64),
    "convex-mlp": (1, 8, 8),
    "convex-cnn": (3, 16, 16),
}


def test_every_registered_architecture_has_a_test_shape():
    assert set(ARCHITECTURES) == set(TYPICAL_SHAPES)


@pytest.mark.parametrize("arch", sorted(TYPICAL_SHAPES))
def test_architecture_gives_one_logit_per_class(arch):
    torch.manual_seed(0)
    shape = TYPICAL_SHAPES[arch]
    model = build_model(arch, num_classes=7, input_shape=shape).eval()
    inputs = torch.rand(2, *shape)
    with torch.no_grad():
        logits = model(inputs)
        alone = model(inputs[1:])
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    # Each row is the model of its own input: another input gives other logits, and an input
    # alone gives what it gave in the batch.
    assert not torch.allclose(logits[0], logits[1])
    assert torch.allclose(alone[0], logits[1], atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "expected"),
    # He et al. (2016), Table 6: 0.27M, 0.85M, 1.7M (option A); the two 1x1 projection
    # shortcuts of Cohen et al.'s code add 2,752 parameters.
    [
        ("cifar-resnet20", 0.27e6),
        ("cifar-resnet56", 0.85e6),
        ("cifar-resnet110", 1.7e6),
    ],
)
def test_cifar_resnet_parameter_counts_match_the_paper(arch, expected):
    model = build_model(arch, num_classes=10, input_shape=(3, 32, 32))
    assert count_parameters(model) == pytest.approx(expected, rel=0.03)


def test_resnet18_parameter_count_matches_imagenet_resnet18():
    model = build_model("resnet18", num_classes=1000, input_shape=(3, 160, 160))
    # torchvision's resnet18: 11,689,512 parameters.
    assert count_parameters(model) == 11_689_512


def test_resnet50_has_torchvision_names_shapes_and_parameter_count():
    net = build_model("resnet50", num_classes=1000, input_shape=(3, 224, 224))[1]
    state = net.state_dict()
    # torchvision's resnet50: 53 convs + fc (2) + 53 BatchNorms x 5 entries = 320; 25,557,032
    # parameters.
    assert len(state) == 320
    assert count_parameters(net) == 25_557_032
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.num_batches_tracked": (),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.running_var": (256,),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.weight": (1024,),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    assert {key: tuple(state[key].shape) for key in expected} == expected
    assert not any(key.startswith(("layer1.1.downsample", "layer4.1.downsample"))
                   for key in state)
    # torchvision's "v1.5": the stride of a stage sits on the 3x3 conv of its first block.
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv1.stride == (1, 1)


def test_cifar_resnet_has_projection_shortcuts_where_the_shape_changes():
    net = build_model("cifar-resnet110", num_classes=10, input_shape=(3, 32, 32))[1]
    shortcuts = {key: tuple(value.shape) for key, value in net.state_dict().items()
                 if key.endswith("downsample.0.weight")}
    # Cohen et al.'s (and MACER's) ResNet: 1x1 conv + BatchNorm at the start of stages 2 and 3.
    assert shortcuts == {"layer2.0.downsample.0.weight": (32, 16, 1, 1),
                         "layer3.0.downsample.0.weight": (64, 32, 1, 1)}
    assert [len(getattr(net, f"layer{k}")) for k in (1, 2, 3)] == [18, 18, 18]


def test_cifar_resnet_takes_other_channel_counts_and_sizes():
    model = build_model("cifar-resnet20", num_classes=3, input_shape=(1, 28, 28)).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 3) and not torch.allclose(logits[0], logits[1])


def test_normalize_is_the_first_layer_and_uses_per_channel_statistics():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    model = build_model(
        "cifar-resnet20", num_classes=10, input_shape=(3, 32, 32), mean=mean, std=std
    )
    first = model[0]
    assert isinstance(first, Normalize)
    x = torch.ones(1, 3, 2, 2)
    out = first(x)
    # (1 - 0.5) / 0.5 = 1, (1 - 0.25) / 0.25 = 3, (1 - 0) / 2 = 0.5
    assert torch.equal(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 0.5]))
    assert torch.equal(out[0, 2], torch.full((2, 2), 0.5))


def test_normalize_is_per_feature_for_tabular_inputs():
    layer = Normalize(mean=[1.0, 2.0], std=[2.0, 4.0])
    assert torch.equal(layer(torch.tensor([[3.0, 6.0]])), torch.tensor([[1.0, 1.0]]))


def test_normalize_without_mean_is_the_identity():
    model = build_model("mlp", num_classes=2, input_shape=(5,))
    x = torch.rand(3, 5)
    assert model[0](x) is x
    assert not any(key.startswith("0.") for key in model.state_dict())


def test_normalization_statistics_travel_with_the_checkpoint():
    kwargs = {"num_classes": 10, "input_shape": (3, 8, 8)}
    model = build_model("small-cnn", **kwargs, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    state = model.state_dict()
    assert torch.allclose(state["0.mean"], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(state["0.std"], torch.tensor([0.4, 0.5, 0.6]))
    restored = build_model("small-cnn", **kwargs, mean=(0.0,) * 3, std=(1.0,) * 3)
    restored.load_state_dict(state)
    assert torch.equal(restored[0].mean, state["0.mean"])


def test_unknown_architecture_is_named_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg16'.*resnet18"):
        build_model("vgg16", num_classes=10, input_shape=(3, 32, 32))


@pytest.mark.parametrize(
    ("arch", "shape"),
    [
        ("cifar-resnet20", (30,)),
        ("digits-cnn", (1, 2, 2)),
        ("resnet18", (3, 16, 16)),
        ("small-cnn", (8, 8)),
    ],
)
def test_incompatible_input_shape_is_named(arch, shape):
    with pytest.raises(ValueError, match=rf"'{arch}'.*\(C, H, W\).*{str(shape)[1:-1]}"):
        build_model(arch, num_classes=10, input_shape=shape)


@pytest.mark.parametrize(
    ("mean", "std"),
    [((0.5, 0.5), (0.2, 0.2)), ((0.5, 0.5, 0.5), None), ((0.5,), (0.0,))],
)
def test_bad_normalization_statistics_are_rejected(mean, std):
    with pytest.raises(ValueError):
        build_model("mlp", num_classes=2, input_shape=(3, 4, 4), mean=mean, std=std)


@pytest.mark.parametrize("arch", ["linear", "mlp", "digits-cnn", "cifar-resnet20"])
def test_gradients_reach_every_parameter(arch):
    torch.manual_seed(0)
    shape = TYPICAL_SHAPES[arch]
    model = build_model(arch, num_classes=4, input_shape=shape, mean=(0.5,), std=(0.25,))
    x = torch.rand(4, *shape, requires_grad=True)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", ["mlp", "cifar-resnet20"])
def test_eval_mode_is_deterministic(arch):
    torch.manual_seed(0)
    shape = TYPICAL_SHAPES[arch]
    model = build_model(arch, num_classes=10, input_shape=shape).eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("arch", ["cifar-resnet20", "resnet18", "resnet50"])
def test_channels_last_and_bfloat16_autocast_agree_with_float32(arch):
    torch.manual_seed(0)
    shape = TYPICAL_SHAPES[arch]
    model = build_model(arch, num_classes=10, input_shape=shape, mean=(0.5,), std=(0.2,)).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        reference = model(x)
        fast_model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = fast_model(x.to(memory_format=torch.channels_last))
    assert fast.shape == reference.shape
    assert torch.allclose(fast.float(), reference, atol=0.1 * reference.abs().max().item())
