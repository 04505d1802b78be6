"""Loaders read the official layouts (built tiny in tmp_path) and keep inputs in [0, 1]."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csrs.data import (
    DATASETS,
    DataError,
    ImageFiles,
    dataset_labels,
    load_dataset,
    random_crop_flip,
    validation_split,
)


def stack(dataset) -> tuple[torch.Tensor, np.ndarray]:
    inputs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return inputs, np.array([dataset[i][1] for i in range(len(dataset))])


def save_image(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, value // 2)).save(path)


# --- bundled datasets -------------------------------------------------------------------------

def test_digits_shapes_range_and_names():
    data = load_dataset("digits")
    x, y = data.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) == data.input_shape
    assert isinstance(y, int)
    inputs, _ = stack(data.train)
    assert inputs.min() >= 0 and inputs.max() == 1
    assert len(data.train) + len(data.test) == 1797
    assert data.class_names == [str(k) for k in range(10)] and data.num_classes == 10
    assert (data.default_cost, data.default_arch, data.mean, data.augment) == (
        "3", "mlp", None, None)


@pytest.mark.parametrize("name", ["digits", "breast-cancer"])
def test_bundled_split_is_stratified(name):
    data = load_dataset(name)
    train, test = dataset_labels(data.train), dataset_labels(data.test)
    for c in range(data.num_classes):
        in_class = (train == c).sum() + (test == c).sum()
        assert abs((test == c).sum() - 0.25 * in_class) <= 0.5


@pytest.mark.parametrize("name", ["digits", "breast-cancer"])
def test_same_seed_same_split_other_seed_other_split(name):
    first, again, other = (load_dataset(name, seed=s).test for s in (0, 0, 1))
    assert torch.equal(first.tensors[0], again.tensors[0])
    assert not torch.equal(first.tensors[0], other.tensors[0])


def test_breast_cancer_scaled_with_train_statistics():
    data = load_dataset("breast-cancer")
    train, _ = stack(data.train)
    test, _ = stack(data.test)
    assert data.input_shape == (30,) and train.shape[1] == 30
    assert torch.allclose(train.min(0).values, torch.zeros(30))
    assert torch.allclose(train.max(0).values, torch.ones(30))
    assert test.min() >= 0 and test.max() <= 1
    assert data.class_names == ["malignant", "benign"]
    assert (data.default_cost, data.default_arch) == ("malignant->benign", "mlp")


# --- CIFAR-10 --------------------------------------------------------------------------------

def write_cifar(root: Path, per_batch: int = 3, meta: bool = True) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    if meta:
        names = [f"thing{k}".encode() for k in range(10)]
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return folder


def test_cifar10_reads_official_batches(tmp_path):
    folder = write_cifar(tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert len(data.train) == 15 and len(data.test) == 3
    raw = pickle.loads((folder / "data_batch_2").read_bytes())
    x, y = data.train[3]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert torch.equal(x, torch.tensor(raw[b"data"][0].reshape(3, 32, 32) / 255.0).float())
    assert y == raw[b"labels"][0]
    assert data.class_names[3] == "thing3"
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.default_arch == "cifar-resnet56"
    assert load_dataset("cifar10", folder).num_classes == 10


def test_cifar10_without_meta_uses_standard_names(tmp_path):
    write_cifar(tmp_path, meta=False)
    assert load_dataset("cifar10", tmp_path).class_names[3] == "cat"


def test_cifar10_missing_batch_names_file_and_folder(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4") as error:
        load_dataset("cifar10", tmp_path)
    assert str(folder) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DataError, match=str(tmp_path / "empty" / "cifar-10-batches-py")):
        load_dataset("cifar10", tmp_path / "empty")


@pytest.mark.parametrize("content, reason", [
    (lambda raw: raw[:len(raw) // 2], "the file ends early (truncated)"),
    (lambda raw: pickle.dumps([1, 2]), "it holds a list, not a dict"),
    (lambda raw: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "it has no b'labels'"),
    (lambda raw: pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
     "b'data' is uint8 of shape (2, 100), not N x 3072 uint8"),
    (lambda raw: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}),
     "a label is 12; CIFAR-10's are 0..9"),
    (lambda raw: b"cos\nsystem\n(S'echo'\ntR.", "refusing to load os.system"),
])
def test_a_rejected_cifar10_batch_says_why(tmp_path, content, reason):
    folder = write_cifar(tmp_path)
    path = folder / "data_batch_3"
    path.write_bytes(content(path.read_bytes()))
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path)
    message = str(error.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_dataset_needing_files_without_data_dir():
    with pytest.raises(DataError, match="cifar10 needs --data-dir"):
        load_dataset("cifar10")


# --- Imagenette ------------------------------------------------------------------------------

def test_imagenette_reads_wnid_folders(tmp_path):
    root = tmp_path / "imagenette2-160"
    wnids = ["n03425413", "n01440764", "n09999999"]
    for k, wnid in enumerate(wnids):
        for split, count in (("train", 2), ("val", 1)):
            for i in range(count):
                save_image(root / split / wnid / f"{wnid}_{i}.JPEG", (40, 30), 60 * k)
    data = load_dataset("imagenette", tmp_path, image_size=16)
    assert data.class_names == ["tench", "gas pump", "n09999999"]
    assert len(data.train) == 6 and len(data.test) == 3
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) == data.input_shape and 0 <= x.min() and x.max() <= 1
    assert list(dataset_labels(data.train)) == [0, 0, 1, 1, 2, 2]
    assert data.default_arch == "resnet18" and data.mean == (0.485, 0.456, 0.406)
    assert load_dataset("imagenette", root).input_shape == (3, 160, 160)


def test_imagenette_missing_layout(tmp_path):
    with pytest.raises(DataError, match="imagenette2-160") as error:
        load_dataset("imagenette", tmp_path)
    assert "train/<wnid>" in str(error.value) and str(tmp_path) in str(error.value)


# --- ImageNet --------------------------------------------------------------------------------

def test_imagenet_reads_train_and_val_wnid_folders(tmp_path):
    wnids = ["n04550184", "n01440764", "n02102040"]
    for k, wnid in enumerate(wnids):
        for split, count in (("train", 2), ("val", 1)):
            for i in range(count):
                save_image(tmp_path / split / wnid / f"{wnid}_{i}.JPEG", (40, 30), 60 * k)
    data = load_dataset("imagenet", tmp_path, image_size=14)
    assert data.class_names == sorted(wnids) and data.num_classes == 3
    assert len(data.train) == 6 and len(data.test) == 3
    assert list(dataset_labels(data.train)) == [0, 0, 1, 1, 2, 2]
    assert list(dataset_labels(data.test)) == [0, 1, 2]
    x, _ = data.test[0]
    assert x.shape == (3, 14, 14) == data.input_shape and 0 <= x.min() and x.max() <= 1
    # Normalisation is the model's first layer, not part of the data (noise before it).
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    assert data.default_arch == "resnet50"
    assert load_dataset("imagenet", tmp_path).input_shape == (3, 224, 224)


def test_imagenet_resizes_and_crops_like_torchvision(tmp_path):
    # Resize(16) + CenterCrop(14) of a 40 x 30 image in torchvision: shorter side 30 -> 16,
    # longer int(16 * 40 / 30) = 21, crop offsets round((21 - 14) / 2) = 4 and round(1) = 1.
    path = tmp_path / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    expected = Image.open(path).convert("RGB").resize((21, 16), Image.Resampling.BILINEAR)
    expected = np.asarray(expected.crop((4, 1, 18, 15))).transpose(2, 0, 1) / 255
    image = ImageFiles([path], [0], (14, 14), resize=16)[0][0]
    assert torch.allclose(image, torch.tensor(expected, dtype=torch.float32))


def test_imagenet_missing_folders_are_named(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(DataError, match=r"imagenet: expected train/<wnid>/\*\.JPEG") as error:
        load_dataset("imagenet", tmp_path)
    assert "missing: val/" in str(error.value) and str(tmp_path) in str(error.value)
    with pytest.raises(DataError, match="imagenet needs --data-dir"):
        load_dataset("imagenet")


def test_imagenet_flat_val_folder_is_explained(tmp_path):
    save_image(tmp_path / "train" / "n01440764" / "a.JPEG", (8, 8), 0)
    save_image(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", (8, 8), 0)
    with pytest.raises(DataError, match=r"holds images directly.*val/<wnid>/"):
        load_dataset("imagenet", tmp_path)


# --- HAM10000 --------------------------------------------------------------------------------

HAM_DX = ["mel", "nv", "bcc", "bkl", "akiec", "df", "vasc", "nv", "nv", "bkl", "mel", "nv"]


def write_ham(root: Path) -> dict[str, str]:
    """Writes 12 lesions with 1-3 images each, across two folders; returns image -> lesion."""
    lesion_of, rows = {}, []
    for k, dx in enumerate(HAM_DX):
        for i in range(1 + k % 3):
            image = f"ISIC_{k:03d}{i}"
            lesion_of[image] = f"HAM_{k:04d}"
            rows.append({"lesion_id": f"HAM_{k:04d}", "image_id": image, "dx": dx,
                         "dx_type": "histo", "age": "50"})
            part = root / f"HAM10000_images_part_{1 + len(rows) % 2}"
            save_image(part / f"{image}.jpg", (60, 45), 20 * k)
    with open(root / "HAM10000_metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return lesion_of


def lesions(dataset: ImageFiles, lesion_of: dict[str, str]) -> set[str]:
    return {lesion_of[path.stem] for path in dataset.paths}


def test_ham10000_splits_by_lesion_never_by_image(tmp_path):
    lesion_of = write_ham(tmp_path)
    data = load_dataset("ham10000", tmp_path, image_size=8)
    assert len(data.train) + len(data.test) == len(lesion_of)
    train, test = lesions(data.train, lesion_of), lesions(data.test, lesion_of)
    # 4 malignant lesions -> round(0.8) = 1 to test; 8 benign lesions -> round(1.6) = 2.
    assert not train & test and len(test) == 3
    assert set(dataset_labels(data.test)) == {0, 1}
    x, _ = data.test[0]
    assert x.shape == (3, 8, 8) == data.input_shape
    assert data.default_cost == "malignant->benign" and data.class_names == ["malignant", "benign"]


def test_ham10000_akiec_is_malignant(tmp_path):
    lesion_of = write_ham(tmp_path)
    data = load_dataset("ham10000", tmp_path)
    everything = [*zip(data.train.paths, data.train.labels, strict=True),
                  *zip(data.test.paths, data.test.labels, strict=True)]
    akiec = [label for path, label in everything if lesion_of[path.stem] == "HAM_0004"]
    assert akiec and set(akiec) == {0}


def test_ham10000_split_depends_only_on_seed(tmp_path):
    lesion_of = write_ham(tmp_path)
    test_lesions = [lesions(load_dataset("ham10000", tmp_path, seed=s).test, lesion_of)
                    for s in (0, 0, 1, 2, 3)]
    assert test_lesions[0] == test_lesions[1]
    assert any(t != test_lesions[0] for t in test_lesions[2:])


def test_ham10000_missing_image_names_file_and_folders(tmp_path):
    write_ham(tmp_path)
    next(tmp_path.glob("*/ISIC_0050.jpg")).unlink()
    with pytest.raises(DataError, match="ISIC_0050.jpg") as error:
        load_dataset("ham10000", tmp_path)
    assert "HAM10000_images_part_1" in str(error.value)


def test_ham10000_unknown_diagnosis_and_missing_metadata(tmp_path):
    with pytest.raises(DataError, match="HAM10000_metadata.csv"):
        load_dataset("ham10000", tmp_path)
    write_ham(tmp_path)
    metadata = tmp_path / "HAM10000_metadata.csv"
    metadata.write_text(metadata.read_text().replace(",df,", ",xyz,"))
    with pytest.raises(DataError, match="dx='xyz'"):
        load_dataset("ham10000", tmp_path)


# --- the user's own data ---------------------------------------------------------------------

def test_folder_layout_classes_sizes_and_crop(tmp_path):
    for split in ("train", "test"):
        save_image(tmp_path / split / "dog" / "a.png", (12, 10), 200)
        save_image(tmp_path / split / "cat" / "b.JPG", (12, 10), 10)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset("folder", tmp_path)
    assert data.class_names == ["cat", "dog"] and len(data.train) == 2
    assert data.input_shape == (3, 10, 12) and data.train[0][0].shape == (3, 10, 12)
    assert data.mean is None and data.default_arch == "small-cnn"
    gray = load_dataset("folder", tmp_path, image_size=5, grayscale=True)
    assert gray.test[1][0].shape == (1, 5, 5) == gray.input_shape
    # White border, black centre: the square center crop keeps only the black part.
    image = np.full((20, 40, 3), 255, dtype=np.uint8)
    image[:, 10:30] = 0
    Image.fromarray(image).save(tmp_path / "wide.png")
    assert ImageFiles([tmp_path / "wide.png"], [0], (10, 10))[0][0][:, :, 2:8].max() < 0.05


def test_folder_missing_split(tmp_path):
    with pytest.raises(DataError, match="test/<class>"):
        load_dataset("folder", tmp_path)


def test_npz_features_and_images(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "features.npz"
    np.savez(path, x_train=rng.random((20, 5)), y_train=np.arange(20) % 3,
             x_test=rng.random((6, 5)), y_test=np.arange(6) % 3, class_names=["a", "b", "c"])
    data = load_dataset("npz", path)
    assert (data.input_shape, data.default_arch, data.class_names) == ((5,), "mlp", ["a", "b", "c"])
    assert data.train[4][0].dtype == torch.float32 and data.train[4][1] == 1
    images = tmp_path / "images.npz"
    np.savez(images, x_train=rng.random((4, 8, 8)), y_train=[0, 1, 0, 1],
             x_test=rng.random((2, 8, 8)), y_test=[1, 0])
    data = load_dataset("npz", images)
    assert (data.input_shape, data.default_arch, data.num_classes) == ((1, 8, 8), "small-cnn", 2)


def test_npz_rejects_values_outside_unit_interval(tmp_path):
    path = tmp_path / "raw.npz"
    np.savez(path, x_train=np.array([[0.0, 255.0]]), y_train=[0],
             x_test=np.array([[0.0, 1.0]]), y_test=[0])
    with pytest.raises(DataError, match="found min 0, max 255"):
        load_dataset("npz", path)


def test_npz_missing_file_or_arrays(tmp_path):
    with pytest.raises(DataError, match="x_train, y_train, x_test, y_test"):
        load_dataset("npz", tmp_path / "absent.npz")
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 3)), y_train=[0, 1])
    with pytest.raises(DataError, match="missing: x_test, y_test"):
        load_dataset("npz", tmp_path / "partial.npz")


# --- registry, splits, augmentation ----------------------------------------------------------

def test_unknown_dataset_and_option():
    with pytest.raises(ValueError, match="unknown dataset 'foo'; choose from: breast-cancer, "):
        load_dataset("foo")
    with pytest.raises(ValueError, match="no option 'image_size'"):
        load_dataset("digits", image_size=32)
    assert load_dataset("digits", test_fraction=None).num_classes == 10
    assert set(DATASETS) == {"breast-cancer", "cifar10", "digits", "folder", "ham10000",
                             "imagenet", "imagenette", "npz"}


def test_validation_split_is_stratified_disjoint_and_deterministic():
    data = load_dataset("digits")
    labels = dataset_labels(data.train)
    train, val = validation_split(data.train, labels, 0.2, seed=0)
    assert sorted(train.indices + val.indices) == list(range(len(data.train)))
    counts = np.bincount(dataset_labels(val), minlength=10)
    assert np.all(np.abs(counts - 0.2 * np.bincount(labels)) <= 0.5)
    assert validation_split(data.train, None, 0.2, seed=0)[1].indices == val.indices
    assert validation_split(data.train, labels, 0.2, seed=1)[1].indices != val.indices


def test_dataset_labels_reads_no_images():
    files = ImageFiles([Path("/nonexistent.png")] * 3, [2, 0, 1], (4, 4))
    assert list(dataset_labels(torch.utils.data.Subset(files, [2, 0]))) == [1, 2]


def test_augment_keeps_shape_and_repeats_with_seeded_generator():
    batch = torch.rand(16, 3, 32, 32)
    first = random_crop_flip(batch, torch.Generator().manual_seed(0))
    again = random_crop_flip(batch, torch.Generator().manual_seed(0))
    assert first.shape == batch.shape and torch.equal(first, again)
    assert not torch.equal(first, batch)


def test_augment_crops_pad_with_zeros_and_flips_half():
    ones = torch.ones(64, 1, 8, 8)
    cropped = random_crop_flip(ones, torch.Generator().manual_seed(0), padding=2)
    assert (cropped == 0).any() and (cropped == 1).any()
    batch = torch.rand(64, 2, 5, 5)
    flipped = random_crop_flip(batch, torch.Generator().manual_seed(0), padding=0)
    same = (flipped == batch).flatten(1).all(1)
    mirrored = (flipped == batch.flip(-1)).flatten(1).all(1)
    assert torch.all(same | mirrored) and same.any() and mirrored.any()


def test_cifar_reader_refuses_pickles_that_run_code(tmp_path):
    import pickle

    from csrs.data import DataError, load_dataset

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        with open(root / name, "wb") as handle:
            pickle.dump({b"data": Boom(), b"labels": [0]}, handle)
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path)
