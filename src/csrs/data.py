"""Datasets as [0, 1]-valued tensors, registered by name.

The paper's datasets (CIFAR-10, Imagenette, HAM10000), ImageNet (for the field's published
models), two bundled offline sets (scikit-learn's digits and breast cancer) and the user's own data
(an image ``folder`` or an ``npz`` file).

Inputs stay in [0, 1]: Gaussian noise is added in these units, and the ``mean``/``std`` of
:class:`DatasetSplits` belong to the model's first layer; they are never applied here, so radii are
in pixel units, as the field reports them since Cohen et al. The paper's datasets cannot be
downloaded by this library: their loaders read the official layouts from a directory the user
names and raise :class:`DataError` saying which files are expected where.

A new dataset is one loader ``(data_dir, *, seed, **options) -> DatasetSplits`` and one line in
:data:`DATASETS`.
"""

from __future__ import annotations

import csv
import inspect
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSplits",
    "dataset_labels",
    "load_dataset",
    "random_crop_flip",
    "validation_split",
]

Augment = Callable[[Tensor, torch.Generator | None], Tensor]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR10_FILES = [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]
# Imagenette's wnids in sorted order, so label k is the k-th name (the paper's 3 = chain saw,
# 7 = gas pump). Folders with other names keep their folder name.
IMAGENETTE_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888605": "parachute",
}
# HAM10000's diagnoses as the paper's binary task (akiec is malignant; the published code's
# "benign" is a slip: actinic keratoses are precancerous).
HAM10000_LABELS = {"mel": 0, "bcc": 0, "akiec": 0, "nv": 1, "bkl": 1, "df": 1, "vasc": 1}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """Missing or malformed data files; the message is one line naming what is expected where."""


@dataclass
class DatasetSplits:
    """A dataset's train and test splits and what a model and a cost matrix need to know of it.

    Items of ``train`` and ``test`` are ``(x, y)``: ``x`` a float32 tensor in [0, 1] of shape
    ``input_shape``, ``y`` an int. ``mean``/``std`` are for the model's first layer (``None``:
    no normalisation). ``augment`` maps a training batch (B, C, H, W) and a generator to an
    augmented batch of the same shape; the training loop applies it (``None``: no augmentation).
    """

    name: str
    train: Dataset
    test: Dataset
    class_names: list[str]
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    default_cost: str
    default_arch: str
    augment: Augment | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------------------------
# Dataset classes: each keeps its labels in ``labels`` so that they can be read without images.

class LabeledTensors(TensorDataset):
    """In-memory ``(x, y)`` pairs with ``y`` returned as an int."""

    def __init__(self, inputs: Tensor, labels: np.ndarray):
        self.labels = np.asarray(labels, dtype=np.int64)
        super().__init__(inputs, torch.from_numpy(self.labels))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.tensors[0][index], int(self.labels[index])


class Uint8Images(Dataset):
    """Images held as uint8 (N, C, H, W), converted to float32 in [0, 1] one item at a time."""

    def __init__(self, images: Tensor, labels: np.ndarray):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].float().div_(255), int(self.labels[index])


class ImageFiles(Dataset):
    """Images read lazily from files, scaled and center-cropped to ``size`` (H, W) by
    :func:`load_image`."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], size: tuple[int, int],
                 grayscale: bool = False, resize: int | None = None):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size = size
        self.grayscale = grayscale
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = load_image(self.paths[index], self.size, self.grayscale, self.resize)
        return image, int(self.labels[index])


def load_image(path: Path, size: tuple[int, int], grayscale: bool = False,
               resize: int | None = None) -> Tensor:
    """Returns the image at ``path`` as float32 (C, H, W) in [0, 1], C = 1 or 3.

    The image is scaled (bilinear, antialiased) until it covers ``size`` = (H, W), keeping its
    aspect ratio, then center-cropped: for a square size the shorter side becomes H. With
    ``resize``, the shorter side becomes ``resize`` instead (at least max(H, W)), with sizes and
    offsets rounded as torchvision's ``Resize(resize)`` + ``CenterCrop(size)`` round them: the
    ImageNet test transform of the field (256, then 224).
    """
    height, width = size
    mode = "L" if grayscale else "RGB"
    with Image.open(path) as image:
        # JPEGs much larger than the target (HAM10000's 600x450) decode at a reduced scale: fast.
        # Not with ``resize``: the field's transform decodes at full scale.
        if resize is None:
            image.draft(mode, (width, height))
        image = image.convert(mode)
    if resize is None:
        scale = max(height / image.height, width / image.width)
        scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    else:
        short = max(resize, height, width)
        long = int(short * max(image.size) / min(image.size))
        scaled = (short, long) if image.width <= image.height else (long, short)
        left, top = round((scaled[0] - width) / 2), round((scaled[1] - height) / 2)
    if scaled != image.size:
        image = image.resize(scaled, Image.Resampling.BILINEAR)
    array = np.asarray(image.crop((left, top, left + width, top + height)), dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.tensor(array, dtype=torch.float32).div_(255)


# ---------------------------------------------------------------------------------------------
# Augmentation, splits, labels

def random_crop_flip(batch: Tensor, generator: torch.Generator | None = None, *,
                     padding: int = 4) -> Tensor:
    """Returns ``batch`` (B, C, H, W) randomly cropped and flipped, image by image.

    Each image is zero-padded by ``padding`` on every side, cropped back to H x W at a uniform
    random offset and flipped left-right with probability 1/2: torchvision's
    ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()``, the paper's CIFAR-10 augmentation.
    The random draws come from ``generator`` (its device), so a seeded generator repeats them.
    """
    if batch.ndim != 4:
        raise ValueError(f"augmentation expects a batch (B, C, H, W); got {tuple(batch.shape)}")
    size, channels, height, width = batch.shape
    device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * padding + 1, (2, size), generator=generator, device=device)
    flips = torch.rand(size, generator=generator, device=device) < 0.5
    offsets, flips = offsets.to(batch.device), flips.to(batch.device)
    padded = F.pad(batch, (padding, padding, padding, padding))
    rows = offsets[0, :, None] + torch.arange(height, device=batch.device)
    cols = offsets[1, :, None] + torch.arange(width, device=batch.device)
    cropped = padded[torch.arange(size, device=batch.device)[:, None, None, None],
                     torch.arange(channels, device=batch.device)[None, :, None, None],
                     rows[:, None, :, None], cols[:, None, None, :]]
    return torch.where(flips[:, None, None, None], cropped.flip(-1), cropped)


def _stratified_split(labels: Sequence[int] | np.ndarray, fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns sorted (kept, held_out) indices; ``round(fraction * n_c)`` of each class c held out.

    Deterministic: the same labels, fraction and seed give the same split.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction must be in (0, 1); got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held_out = [rng.permutation(np.flatnonzero(labels == c))[: int(fraction * n + 0.5)]
                for c, n in zip(*np.unique(labels, return_counts=True), strict=True)]
    held = np.sort(np.concatenate(held_out)) if held_out else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return kept, held


def validation_split(dataset: Dataset, labels: Sequence[int] | np.ndarray | None,
                     fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Returns (train, validation) subsets of ``dataset``, stratified by class and deterministic.

    ``labels`` are those of ``dataset`` (``None``: read with :func:`dataset_labels`); about
    ``fraction`` of each class goes to validation.
    """
    labels = dataset_labels(dataset) if labels is None else np.asarray(labels)
    if len(labels) != len(dataset):
        raise ValueError(f"got {len(labels)} labels for a dataset of {len(dataset)} items")
    kept, held = _stratified_split(labels, fraction, seed)
    return Subset(dataset, kept.tolist()), Subset(dataset, held.tolist())


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Returns the int64 label of every item of ``dataset``, in order.

    Reads no inputs for the datasets of this module (and Subsets of them), for datasets with a
    ``labels`` or ``targets`` attribute and for TensorDatasets; others are iterated.
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attribute in ("labels", "targets"):
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            return np.asarray(labels, dtype=np.int64)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1].cpu().numpy().astype(np.int64)
    return np.array([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Helpers for the loaders that read files

def _data_dir(data_dir: Path | None, dataset: str, what: str) -> Path:
    """Returns ``data_dir``, or raises saying that ``dataset`` needs one holding ``what``."""
    if data_dir is None:
        raise DataError(f"{dataset} needs --data-dir: {what}")
    return Path(data_dir).expanduser()


def _layout_root(data_dir: Path, folder_name: str, required: Sequence[str]) -> Path | None:
    """Returns ``data_dir/folder_name`` or ``data_dir`` itself, whichever holds ``required``."""
    for candidate in (data_dir / folder_name, data_dir):
        if all((candidate / name).exists() for name in required):
            return candidate
    return None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _scan_class_folders(
    split_dir: Path, dataset: str, classes: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Returns (paths, labels, classes) of the images ``split_dir/<class>/*``.

    Labels index the sorted class folder names, or ``classes`` when given (the train split's,
    for the test split).
    """
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classes = folders if classes is None else classes
    unknown = [name for name in folders if name not in classes]
    if unknown:
        raise DataError(f"{dataset}: class folder {split_dir / unknown[0]} has no counterpart in "
                        f"the train split (classes: {', '.join(classes)})")
    paths, labels = [], []
    for name in folders:
        files = _image_files(split_dir / name)
        paths += files
        labels += [classes.index(name)] * len(files)
    if not paths:
        raise DataError(f"{dataset}: expected images <class>/*.png|jpg|jpeg in {split_dir}; "
                        f"found none")
    return paths, labels, classes


def _wnid_splits(root: Path, dataset: str) -> tuple[list[Path], list[int], list[Path], list[int],
                                                   list[str]]:
    """Returns (train paths, train labels, val paths, val labels, wnids) of the ImageNet layout
    ``root/{train,val}/<wnid>/*.JPEG``; labels index the sorted train wnids."""
    train_paths, train_labels, wnids = _scan_class_folders(root / "train", dataset)
    val = root / "val"
    if not any(p.is_dir() for p in val.iterdir()) and _image_files(val):
        raise DataError(f"{dataset}: {val} holds images directly; expected them sorted into "
                        f"val/<wnid>/ folders (e.g. with valprep.sh, as Cohen et al.'s "
                        f"code asks)")
    val_paths, val_labels, _ = _scan_class_folders(val, dataset, wnids)
    return train_paths, train_labels, val_paths, val_labels, wnids


def _check_size(image_size: int, dataset: str) -> int:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"{dataset}: image_size must be a positive int; got {image_size!r}")
    return image_size


# ---------------------------------------------------------------------------------------------
# Loaders, one per dataset

def load_digits(data_dir: Path | None = None, *, seed: int = 0,
                test_fraction: float = 0.25) -> DatasetSplits:
    """scikit-learn's 8x8 digits (bundled): x = pixel / 16, shape (1, 8, 8); stratified split.

    No augmentation: flips and shifts of an 8x8 digit do not keep its class.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    inputs = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = bunch.target.astype(np.int64)
    train, test = _stratified_split(labels, test_fraction, seed)
    return DatasetSplits(
        "digits", LabeledTensors(inputs[train], labels[train]),
        LabeledTensors(inputs[test], labels[test]), [str(k) for k in range(10)], (1, 8, 8),
        None, None, default_cost="3", default_arch="mlp", augment=None)


def load_breast_cancer(data_dir: Path | None = None, *, seed: int = 0,
                       test_fraction: float = 0.25) -> DatasetSplits:
    """scikit-learn's Wisconsin breast cancer (bundled): 30 features, stratified split.

    Features are min-max scaled with the train split's minimum and maximum (test values are then
    clipped to [0, 1]), so no test statistic leaks into training. Class 0 = malignant.
    """
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer

    bunch = sklearn_breast_cancer()
    labels = bunch.target.astype(np.int64)
    train, test = _stratified_split(labels, test_fraction, seed)
    low = bunch.data[train].min(axis=0)
    span = bunch.data[train].max(axis=0) - low
    span[span == 0] = 1.0
    inputs = torch.tensor(np.clip((bunch.data - low) / span, 0.0, 1.0), dtype=torch.float32)
    return DatasetSplits(
        "breast-cancer", LabeledTensors(inputs[train], labels[train]),
        LabeledTensors(inputs[test], labels[test]), [str(n) for n in bunch.target_names], (30,),
        None, None, default_cost="malignant->benign", default_arch="mlp", augment=None)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only, so a CIFAR batch cannot run code."""

    _ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _unpickle(path: Path) -> object:
    with open(path, "rb") as file:
        return _ArrayUnpickler(file, encoding="bytes").load()


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 (N, 3, 32, 32), labels) of one pickled CIFAR-10 python batch; a
    file that is not one raises DataError saying why."""
    def refuse(reason: str) -> DataError:
        return DataError(f"cifar10: {path} is not a CIFAR-10 python batch (a pickled dict with "
                         f"b'data', N x 3072 uint8, and b'labels'): {reason}")

    try:
        batch = _unpickle(path)
    except (EOFError, pickle.UnpicklingError) as error:
        if isinstance(error, EOFError) or "truncated" in str(error):
            raise refuse("the file ends early (truncated)") from None
        raise refuse(f"it cannot be unpickled ({str(error).strip() or 'damaged bytes'})") \
            from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise refuse(f"it cannot be unpickled ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict):
        raise refuse(f"it holds a {type(batch).__name__}, not a dict")
    missing = [key for key in (b"data", b"labels") if key not in batch]
    if missing:
        raise refuse(f"it has no {missing[0]!r} (its keys: "
                     f"{', '.join(repr(key) for key in batch) or 'none'})")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise refuse(f"b'data' is {data.dtype} of shape {data.shape}, not N x 3072 uint8")
    try:
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError):
        raise refuse("b'labels' is not a list of integers") from None
    if labels.ndim != 1 or len(data) != len(labels):
        raise DataError(f"cifar10: {path} has {len(data)} images but {labels.size} labels")
    outside = labels[(labels < 0) | (labels >= len(CIFAR10_CLASSES))]
    if outside.size:
        raise refuse(f"a label is {int(outside[0])}; CIFAR-10's are 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: Path | None, *, seed: int = 0) -> DatasetSplits:
    """CIFAR-10 from the official python batches in ``data_dir/cifar-10-batches-py/``.

    ``data_dir`` may also be that folder itself. The pickles are read with an unpickler that only
    admits containers and NumPy arrays, so a tampered file cannot run code. Images stay
    uint8 in memory (150 MB) and become float one item at a time.
    """
    data_dir = _data_dir(data_dir, "cifar10", "the folder that holds cifar-10-batches-py/")
    root = _layout_root(data_dir, "cifar-10-batches-py", CIFAR10_FILES)
    if root is None:
        expected = data_dir if (data_dir / "data_batch_1").exists() else (
            data_dir / "cifar-10-batches-py")
        missing = [name for name in CIFAR10_FILES if not (expected / name).is_file()]
        raise DataError(f"cifar10: expected data_batch_1..5 and test_batch in {expected} "
                        f"(missing: {', '.join(missing)}; download the python version of "
                        f"CIFAR-10 and unpack it there)")
    batches = [_read_cifar_batch(root / name) for name in CIFAR10_FILES[:5]]
    train_images = np.concatenate([images for images, _ in batches])
    train_labels = np.concatenate([labels for _, labels in batches])
    test_images, test_labels = _read_cifar_batch(root / "test_batch")
    class_names = CIFAR10_CLASSES
    if (root / "batches.meta").is_file():
        try:
            names = _unpickle(root / "batches.meta").get(b"label_names", ())
        except (pickle.UnpicklingError, EOFError, AttributeError):
            names = ()
        if len(names) == 10:
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return DatasetSplits(
        "cifar10", Uint8Images(torch.from_numpy(train_images), train_labels),
        Uint8Images(torch.from_numpy(test_images), test_labels), class_names, (3, 32, 32),
        CIFAR10_MEAN, CIFAR10_STD, default_cost="3", default_arch="cifar-resnet56",
        augment=partial(random_crop_flip, padding=4))


def load_imagenette(data_dir: Path | None, *, seed: int = 0,
                    image_size: int = 160) -> DatasetSplits:
    """Imagenette from ``data_dir/imagenette2-160/{train,val}/<wnid>/*.JPEG`` (or that folder).

    Labels follow the sorted wnid folders; class names are the readable ImageNet names
    ("gas pump" is class 7). Images are read lazily, shorter side scaled to ``image_size`` and
    center-cropped to a square. The default cost "7" is the paper's single seed class (gas
    pump); augmentation is a random crop with padding ``image_size // 8`` and a flip.
    """
    image_size = _check_size(image_size, "imagenette")
    data_dir = _data_dir(data_dir, "imagenette", "the folder that holds imagenette2-160/")
    root = _layout_root(data_dir, "imagenette2-160", ("train", "val"))
    if root is None:
        raise DataError(f"imagenette: expected train/<wnid>/*.JPEG and val/<wnid>/*.JPEG in "
                        f"{data_dir / 'imagenette2-160'} (download imagenette2-160.tgz from "
                        f"github.com/fastai/imagenette and unpack it there)")
    train_paths, train_labels, test_paths, test_labels, wnids = _wnid_splits(root, "imagenette")
    size = (image_size, image_size)
    return DatasetSplits(
        "imagenette", ImageFiles(train_paths, train_labels, size),
        ImageFiles(test_paths, test_labels, size), [IMAGENETTE_NAMES.get(w, w) for w in wnids],
        (3, image_size, image_size), IMAGENET_MEAN, IMAGENET_STD, default_cost="7",
        default_arch="resnet18", augment=partial(random_crop_flip, padding=image_size // 8))


def load_imagenet(data_dir: Path | None, *, seed: int = 0,
                  image_size: int = 224) -> DatasetSplits:
    """ImageNet (ILSVRC 2012) from ``data_dir/train/<wnid>/*.JPEG`` and ``data_dir/val/<wnid>/``.

    The layout of torchvision's ImageFolder that Cohen et al.'s code reads; labels follow the
    sorted wnids, which are also the class names. Both splits take the field's test transform:
    shorter side scaled to ``image_size * 8/7`` (256) and center-cropped to ``image_size`` (224).
    Training augments batches with a random crop (zero padding ``image_size // 8``) and a flip,
    like Imagenette, rather than torchvision's RandomResizedCrop, which would draw its crops
    per file outside the training loop's seeded generator. ImageNet's mean/std belong to the
    model (default ``resnet50``); the default cost "0" is a placeholder: pass ``--cost``.
    """
    image_size = _check_size(image_size, "imagenet")
    data_dir = _data_dir(data_dir, "imagenet", "the folder that holds train/ and val/")
    missing = [name for name in ("train", "val") if not (data_dir / name).is_dir()]
    if missing:
        raise DataError(f"imagenet: expected train/<wnid>/*.JPEG and val/<wnid>/*.JPEG in "
                        f"{data_dir} (missing: {', '.join(f'{name}/' for name in missing)})")
    train_paths, train_labels, test_paths, test_labels, wnids = _wnid_splits(data_dir,
                                                                             "imagenet")
    size, resize = (image_size, image_size), round(image_size * 256 / 224)
    return DatasetSplits(
        "imagenet", ImageFiles(train_paths, train_labels, size, resize=resize),
        ImageFiles(test_paths, test_labels, size, resize=resize), wnids,
        (3, image_size, image_size), IMAGENET_MEAN, IMAGENET_STD, default_cost="0",
        default_arch="resnet50", augment=partial(random_crop_flip, padding=image_size // 8))


def _read_ham_metadata(path: Path) -> list[tuple[str, str, int]]:
    """Returns (lesion_id, image_id, label) for every row of HAM10000_metadata.csv."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        missing = {"lesion_id", "image_id", "dx"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"ham10000: {path} lacks the column(s) {', '.join(sorted(missing))}")
        rows = []
        for row in reader:
            dx = row["dx"].strip().lower()
            if dx not in HAM10000_LABELS:
                raise DataError(f"ham10000: unknown diagnosis dx='{dx}' for image "
                                f"{row['image_id']} in {path}; expected one of "
                                f"{', '.join(HAM10000_LABELS)}")
            rows.append((row["lesion_id"].strip(), row["image_id"].strip(), HAM10000_LABELS[dx]))
    if not rows:
        raise DataError(f"ham10000: {path} lists no images")
    return rows


def load_ham10000(data_dir: Path | None, *, seed: int = 0, image_size: int = 32,
                  test_fraction: float = 0.2) -> DatasetSplits:
    """HAM10000 as the paper's binary task: 0 = malignant (mel, bcc, akiec), 1 = benign.

    Reads ``data_dir/HAM10000_metadata.csv`` and the images ``<image_id>.jpg`` from ``data_dir``
    and its direct subfolders (e.g. HAM10000_images_part_1/ and _part_2/). The split is by
    lesion, never by image: ``test_fraction`` of each class's lesions, drawn with ``seed``, go to
    test with all their images. Images are center-cropped squares of side ``image_size`` (32: the
    CIFAR-style ResNet-56 of the paper). Normalisation: ImageNet's mean/std.
    """
    image_size = _check_size(image_size, "ham10000")
    data_dir = _data_dir(data_dir, "ham10000", "the folder that holds HAM10000_metadata.csv")
    metadata = data_dir / "HAM10000_metadata.csv"
    if not metadata.is_file():
        raise DataError(f"ham10000: expected HAM10000_metadata.csv in {data_dir}, with the images "
                        f"<image_id>.jpg there or in its subfolders (e.g. HAM10000_images_part_1/)")
    rows = _read_ham_metadata(metadata)
    folders = [data_dir, *sorted(p for p in data_dir.iterdir() if p.is_dir())]
    found: dict[str, Path] = {}
    for folder in folders:
        for path in _image_files(folder):
            found.setdefault(path.name.lower(), path)
    lesion_labels: dict[str, int] = {}
    for lesion, image, label in rows:
        if f"{image}.jpg".lower() not in found:
            raise DataError(f"ham10000: image {image}.jpg (listed in {metadata.name}) not found in "
                            f"{', '.join(str(f) for f in folders)}")
        if lesion_labels.setdefault(lesion, label) != label:
            raise DataError(f"ham10000: lesion {lesion} has both malignant and benign images in "
                            f"{metadata}")
    lesions = sorted(lesion_labels)
    _, held = _stratified_split([lesion_labels[k] for k in lesions], test_fraction, seed)
    test_lesions = {lesions[i] for i in held}
    splits: dict[bool, tuple[list[Path], list[int]]] = {False: ([], []), True: ([], [])}
    for lesion, image, label in rows:
        paths, labels = splits[lesion in test_lesions]
        paths.append(found[f"{image}.jpg".lower()])
        labels.append(label)
    size = (image_size, image_size)
    return DatasetSplits(
        "ham10000", ImageFiles(*splits[False], size), ImageFiles(*splits[True], size),
        ["malignant", "benign"], (3, image_size, image_size), IMAGENET_MEAN, IMAGENET_STD,
        default_cost="malignant->benign", default_arch="cifar-resnet56",
        augment=partial(random_crop_flip, padding=max(1, image_size // 8)))


def load_folder(data_dir: Path | None, *, seed: int = 0, image_size: int | None = None,
                grayscale: bool = False) -> DatasetSplits:
    """The user's images in ``data_dir/{train,test}/<class>/*.png|jpg|jpeg``.

    Classes are the sorted train folder names. Images become ``image_size`` squares (shorter side
    scaled, center crop); by default all take the first train image's size. No normalisation and
    no augmentation (flips need not keep the user's classes); default cost "0", arch "small-cnn".
    """
    data_dir = _data_dir(data_dir, "folder", "the folder that holds train/<class>/, test/<class>/")
    if not ((data_dir / "train").is_dir() and (data_dir / "test").is_dir()):
        raise DataError(f"folder: expected train/<class>/*.png|jpg|jpeg and "
                        f"test/<class>/*.png|jpg|jpeg in {data_dir}")
    train_paths, train_labels, classes = _scan_class_folders(data_dir / "train", "folder")
    test_paths, test_labels, _ = _scan_class_folders(data_dir / "test", "folder", classes)
    if image_size is None:
        with Image.open(train_paths[0]) as first:
            size = (first.height, first.width)
    else:
        size = (_check_size(image_size, "folder"),) * 2
    return DatasetSplits(
        "folder", ImageFiles(train_paths, train_labels, size, grayscale),
        ImageFiles(test_paths, test_labels, size, grayscale), classes,
        (1 if grayscale else 3, *size), None, None, default_cost="0", default_arch="small-cnn",
        augment=None)


def _npz_inputs(arrays: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """Returns ``arrays[key]`` as float32 after checking it lies in [0, 1]."""
    inputs = np.asarray(arrays[key], dtype=np.float32)
    low, high = (float(inputs.min()), float(inputs.max())) if inputs.size else (0.0, 0.0)
    if not (0.0 <= low and high <= 1.0):
        raise DataError(f"npz: {key} in {path} must lie in [0, 1] (found min {low:g}, max "
                        f"{high:g}); scale it before saving, e.g. pixels / 255")
    return inputs[:, None] if inputs.ndim == 3 else inputs


def _npz_labels(arrays: np.lib.npyio.NpzFile, key: str, path: Path, count: int) -> np.ndarray:
    """Returns ``arrays[key]`` as int64 after checking it holds ``count`` integer labels."""
    labels = np.asarray(arrays[key])
    integral = np.issubdtype(labels.dtype, np.number) and np.array_equal(labels, np.round(labels))
    if labels.shape != (count,) or not integral:
        raise DataError(f"npz: {key} in {path} must hold {count} integer labels (one per row of "
                        f"x); got shape {labels.shape}, dtype {labels.dtype}")
    return labels.astype(np.int64)


def load_npz(data_dir: Path | None, *, seed: int = 0) -> DatasetSplits:
    """The user's arrays: ``data_dir`` is a .npz with x_train, y_train, x_test, y_test.

    x is (N, D) features or (N, C, H, W) images ((N, H, W) gets one channel), already in [0, 1];
    y holds integer labels 0..m-1. An optional ``class_names`` array names the classes.
    Default arch "mlp" for features, "small-cnn" for images; default cost "0".
    """
    path = _data_dir(data_dir, "npz", "the path of a .npz with x_train, y_train, x_test, y_test")
    keys = ("x_train", "y_train", "x_test", "y_test")
    expected = f"npz: expected a .npz file with arrays {', '.join(keys)} at {path}"
    if not path.is_file():
        raise DataError(expected)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in keys if key not in arrays.files]
            if missing:
                raise DataError(f"{expected} (missing: {', '.join(missing)})")
            x_train, x_test = (_npz_inputs(arrays, key, path) for key in ("x_train", "x_test"))
            y_train = _npz_labels(arrays, "y_train", path, len(x_train))
            y_test = _npz_labels(arrays, "y_test", path, len(x_test))
            has_names = "class_names" in arrays.files
            names = [str(n) for n in arrays["class_names"]] if has_names else None
    except DataError:
        raise
    except (OSError, ValueError) as error:
        raise DataError(f"{expected} ({error})") from None
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"npz: x_train items have shape {x_train.shape[1:]} but x_test items "
                        f"{x_test.shape[1:]} in {path}")
    num_classes = len(names) if names is not None else int(max(y_train.max(), y_test.max())) + 1
    for key, labels in (("y_train", y_train), ("y_test", y_test)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(f"npz: {key} in {path} must lie in 0..{num_classes - 1} "
                            f"(found {labels.min()}..{labels.max()})")
    input_shape = tuple(int(n) for n in x_train.shape[1:])
    return DatasetSplits(
        "npz", LabeledTensors(torch.from_numpy(x_train), y_train),
        LabeledTensors(torch.from_numpy(x_test), y_test),
        names or [str(k) for k in range(num_classes)], input_shape, None, None,
        default_cost="0", default_arch="mlp" if len(input_shape) == 1 else "small-cnn",
        augment=None)


DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "breast-cancer": load_breast_cancer,
    "cifar10": load_cifar10,
    "digits": load_digits,
    "folder": load_folder,
    "ham10000": load_ham10000,
    "imagenet": load_imagenet,
    "imagenette": load_imagenette,
    "npz": load_npz,
}


def load_dataset(name: str, data_dir: str | Path | None = None, *, seed: int = 0,
                 **options: object) -> DatasetSplits:
    """Returns the train/test splits of the dataset registered as ``name``.

    ``seed`` fixes the split of datasets without an official one (digits, breast-cancer,
    ham10000); the same seed always gives the same split. ``options`` are the loader's keyword
    arguments (e.g. ``image_size``); an option set to ``None`` takes the loader's default.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose from: {', '.join(sorted(DATASETS))}")
    loader = DATASETS[name]
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("data_dir", "seed")]
    options = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset '{name}' has no option '{unknown[0]}'; its options: "
                         f"{', '.join(accepted) or 'none'}")
    return loader(None if data_dir is None else Path(data_dir), seed=seed, **options)
