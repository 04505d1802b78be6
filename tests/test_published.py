"""Published checkpoints import exactly: the same logits on [0, 1] inputs as the original code.

The reference modules below mirror, name for name, the models of Cohen et al.'s code
(locuslab/smoothing: ``datasets.NormalizeLayer``, ``archs/cifar_resnet.py`` after bearpaw,
torchvision's ``resnet50`` inside ``DataParallel``) and of MACER's ``model.py``; the files are
built with random weights and saved as those codes save them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from csrs.checkpoint import load_checkpoint, save_checkpoint
from csrs.cli import main
from csrs.data import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from csrs.models import build_model
from csrs.published import PublishedFormatError, import_published


# --- reference models, named as in the original code -------------------------------------------
class NormalizeLayer(nn.Module):
    """Cohen's: mean and std as plain attributes (no buffers, so no state_dict entries)."""

    def __init__(self, means, sds):
        super().__init__()
        self.means, self.sds = torch.tensor(means), torch.tensor(sds)

    def forward(self, x):
        batch, _, height, width = x.shape
        means = self.means.repeat((batch, height, width, 1)).permute(0, 3, 1, 2)
        sds = self.sds.repeat((batch, height, width, 1)).permute(0, 3, 1, 2)
        return (x - means) / sds


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ReferenceResNet(nn.Module):
    """bearpaw's CIFAR ResNet (Cohen) / MACER's ResNet_Cifar (``cifar=True``, AvgPool2d(8)) or
    torchvision's ImageNet ResNet (``cifar=False``)."""

    def __init__(self, block, layers, widths, num_classes, cifar):
        super().__init__()
        self.inplanes = widths[0]
        if cifar:
            self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = None if cifar else nn.MaxPool2d(3, 2, 1)
        for index, (planes, blocks) in enumerate(zip(widths, layers, strict=True)):
            setattr(self, f"layer{index + 1}",
                    self._make_layer(block, planes, blocks, 1 if index == 0 else 2))
        self.stages = len(widths)
        self.avgpool = nn.AvgPool2d(8, stride=1) if cifar else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for index in range(1, self.stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.avgpool(x).view(x.size(0), -1))


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with random weights and BatchNorm statistics (not identities)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            uniform = torch.rand(tensor.shape, generator=generator)
            if not tensor.is_floating_point():
                continue
            if tensor.dim() > 1:  # conv and linear weights: He initialisation
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2 / fan_in) ** 0.5)
            elif name.endswith(("running_var", "weight")):  # BatchNorm scales
                tensor.copy_(0.75 + 0.5 * uniform)
            else:  # biases and running means
                tensor.copy_(0.2 * (uniform - 0.5))
    return model.eval()


def cohen_cifar(depth: int) -> nn.Module:
    blocks = (depth - 2) // 6
    net = ReferenceResNet(BasicBlock, [blocks] * 3, (16, 32, 64), 10, cifar=True)
    return randomized(nn.Sequential(NormalizeLayer(CIFAR10_MEAN, CIFAR10_STD), net))


def cohen_imagenet() -> nn.Module:
    net = ReferenceResNet(Bottleneck, [3, 4, 6, 3], (64, 128, 256, 512), 1000, cifar=False)
    return randomized(nn.Sequential(NormalizeLayer(IMAGENET_MEAN, IMAGENET_STD),
                                    nn.DataParallel(net)))


def macer_resnet110() -> nn.Module:
    return randomized(ReferenceResNet(BasicBlock, [18, 18, 18], (16, 32, 64), 10, cifar=True))


def save_cohen(path: Path, model: nn.Module, arch: str, **options) -> Path:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save({"epoch": 90, "arch": arch, "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict()}, path, **options)
    return path


def logits_agree(path: Path, reference: nn.Module, shape: tuple[int, ...]) -> None:
    model = load_checkpoint(path).build_model()
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert expected.abs().max() > 0.1  # not a degenerate model
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


# --- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "depth"), [("cifar_resnet20", 20), ("cifar_resnet110", 110)])
def test_cohen_cifar_checkpoint_gives_the_same_logits(tmp_path, arch, depth):
    reference = cohen_cifar(depth)
    assert next(iter(reference.state_dict())) == "1.conv1.weight"
    path = import_published(save_cohen(tmp_path / "checkpoint.pth.tar", reference, arch),
                            tmp_path / "m.pt", source="cohen", sigma=0.25)
    logits_agree(path, reference, (3, 32, 32))
    meta = load_checkpoint(path).meta
    assert (meta["arch"], meta["dataset"], meta["num_classes"]) == (f"cifar-resnet{depth}",
                                                                    "cifar10", 10)
    assert meta["mean"] == pytest.approx(CIFAR10_MEAN) and meta["std"] == pytest.approx(CIFAR10_STD)


@pytest.mark.slow
def test_cohen_imagenet_resnet50_in_data_parallel_gives_the_same_logits(tmp_path):
    reference = cohen_imagenet()
    keys = list(reference.state_dict())
    assert keys[0] == "1.module.conv1.weight" and len(keys) == 320
    path = import_published(save_cohen(tmp_path / "checkpoint.pth.tar", reference, "resnet50"),
                            tmp_path / "m.pt", source="cohen", sigma=0.5)
    # Small inputs keep the CPU test fast; the network is the same at 224 x 224.
    logits_agree(path, reference, (3, 64, 64))
    checkpoint = load_checkpoint(path)
    assert (checkpoint.meta["arch"], checkpoint.meta["dataset"]) == ("resnet50", "imagenet")
    assert checkpoint.meta["input_shape"] == [3, 224, 224] and checkpoint.num_classes == 1000


def test_cohen_imagenet_matches_torchvision_when_installed(tmp_path):
    models = pytest.importorskip("torchvision.models")
    net = randomized(models.resnet50())
    reference = nn.Sequential(NormalizeLayer(IMAGENET_MEAN, IMAGENET_STD), nn.DataParallel(net))
    path = import_published(save_cohen(tmp_path / "c.pth.tar", reference, "resnet50"),
                            tmp_path / "m.pt", source="cohen", sigma=0.5)
    logits_agree(path, reference, (3, 64, 64))


def test_legacy_serialization_of_2019_files_is_read(tmp_path):
    # Cohen et al.'s files predate PyTorch 1.6's zip format.
    reference = cohen_cifar(20)
    source = save_cohen(tmp_path / "old.pth.tar", reference, "cifar_resnet20",
                        _use_new_zipfile_serialization=False)
    logits_agree(import_published(source, tmp_path / "m.pt", source="cohen", sigma=0.12),
                 reference, (3, 32, 32))


@pytest.mark.parametrize("data_parallel", [False, True])
def test_macer_resnet110_gives_the_same_logits_without_normalisation(tmp_path, data_parallel):
    reference = macer_resnet110()
    state = (nn.DataParallel(reference) if data_parallel else reference).state_dict()
    torch.save({"net": state, "epoch": 440}, tmp_path / "440.pth")
    path = import_published(tmp_path / "440.pth", tmp_path / "m.pt", source="macer",
                            sigma=0.25, arch="resnet110")
    logits_agree(path, reference, (3, 32, 32))
    meta = load_checkpoint(path).meta
    assert meta["mean"] is None and meta["std"] is None
    assert meta["source"] == {"format": "macer", "file": str(tmp_path / "440.pth"),
                              "arch": "resnet110"}


def test_training_sigma_and_cost_are_recorded(tmp_path):
    source = save_cohen(tmp_path / "c.pth.tar", cohen_cifar(20), "cifar_resnet20")
    path = import_published(source, tmp_path / "m.pt", source="cohen", sigma=0.25,
                            cost="cat->dog", data_dir=tmp_path)
    checkpoint = load_checkpoint(path)
    assert checkpoint.sigma == 0.25 and checkpoint.meta["epoch"] == 90
    assert checkpoint.cost_matrix().costly(3) == [5]
    assert checkpoint.meta["data_dir"] == str(tmp_path)
    default = import_published(source, tmp_path / "d.pt", source="cohen", sigma=0.25)
    assert load_checkpoint(default).meta["cost_spec"] == "3"


# --- refusals ---------------------------------------------------------------------------------
def test_unrecognised_format_lists_the_keys_found(tmp_path):
    torch.save({"model": {}, "epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(PublishedFormatError, match=r"not in cohen's format \(a dict with "
                       r"'arch', 'state_dict'\); keys found: model, epoch$"):
        import_published(tmp_path / "other.pt", tmp_path / "m.pt", source="cohen", sigma=0.5)
    torch.save({"net": macer_resnet110().state_dict()}, tmp_path / "macer.pth")
    with pytest.raises(PublishedFormatError, match="looks like --from macer"):
        import_published(tmp_path / "macer.pth", tmp_path / "m.pt", source="cohen", sigma=0.5)
    with pytest.raises(ValueError, match="unknown format 'smoothadv'; choose from: cohen, macer"):
        import_published(tmp_path / "macer.pth", tmp_path / "m.pt", source="smoothadv", sigma=0.5)


def test_csrs_checkpoint_and_pickled_module_are_refused(tmp_path):
    model = build_model("mlp", num_classes=2, input_shape=(3,))
    save_checkpoint(tmp_path / "csrs.pt", model, {
        "arch": "mlp", "num_classes": 2, "input_shape": [3], "sigma": 0.5, "dataset": "npz",
        "cost_matrix": [[0, 1], [0, 0]]})
    with pytest.raises(PublishedFormatError, match="already a csrs checkpoint"):
        import_published(tmp_path / "csrs.pt", tmp_path / "m.pt", source="macer", sigma=0.5)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(PublishedFormatError, match=r"cannot be read with torch\.load\(weights"):
        import_published(tmp_path / "whole.pt", tmp_path / "m.pt", source="cohen", sigma=0.5)


def test_weights_of_another_network_are_named(tmp_path):
    source = save_cohen(tmp_path / "c.pth.tar", cohen_cifar(20), "cifar_resnet110")
    with pytest.raises(PublishedFormatError, match=r"do not fit csrs's cifar-resnet110 .*"
                       r"missing layer1\.3\.conv1\.weight"):
        import_published(source, tmp_path / "m.pt", source="cohen", sigma=0.5)
    hundred = nn.Sequential(NormalizeLayer(CIFAR10_MEAN, CIFAR10_STD),
                            ReferenceResNet(BasicBlock, [3] * 3, (16, 32, 64), 100, cifar=True))
    save_cohen(tmp_path / "c100.pth.tar", hundred, "cifar_resnet20")
    with pytest.raises(PublishedFormatError, match=r"fc\.weight has shape \(100, 64\) in the "
                       r"file, \(10, 64\) in the model"):
        import_published(tmp_path / "c100.pth.tar", tmp_path / "m.pt", source="cohen",
                         sigma=0.5)
    with pytest.raises(PublishedFormatError, match="cifar_resnet110 is a cifar10 model; got "
                       "dataset 'imagenet'"):
        import_published(source, tmp_path / "m.pt", source="cohen", sigma=0.5,
                         dataset="imagenet")
    assert not (tmp_path / "m.pt").exists()


# --- command line -----------------------------------------------------------------------------
def write_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, 2).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


def test_cli_imports_then_certifies_and_warns_of_another_sigma(tmp_path, capsys):
    source = save_cohen(tmp_path / "checkpoint.pth.tar", cohen_cifar(110), "cifar_resnet110")
    data_dir = write_cifar(tmp_path / "data")
    out = tmp_path / "m.pt"
    assert main(["import", str(source), "--from", "cohen", "--dataset", "cifar10",
                 "--sigma", "0.25", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    assert "trained at sigma 0.25" in capsys.readouterr().out
    results = tmp_path / "r.tsv"
    assert main(["certify", str(out), "--cost", "3", "--n0", "10", "--n", "50", "--max", "2",
                 "--out", str(results), "--quiet"]) == 0
    assert "sigma" not in capsys.readouterr().err
    assert len(results.read_text().splitlines()) == 3
    assert main(["certify", str(out), "--sigma", "0.5", "--n0", "10", "--n", "50", "--max", "1",
                 "--out", str(tmp_path / "r50.tsv"), "--quiet"]) == 0
    assert capsys.readouterr().err.strip() == ("warning: certifying at sigma 0.5; the model was "
                                               "trained at sigma 0.25")


def test_cli_unrecognised_file_is_one_line(tmp_path, capsys):
    torch.save({"weights": {}}, tmp_path / "other.pt")
    assert main(["import", str(tmp_path / "other.pt"), "--from", "macer", "--sigma", "0.5",
                 "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "keys found: weights" in err and "Traceback" not in err
