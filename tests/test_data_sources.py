"""Tests of the sources (folder tree, CIFAR-10 batches, synthetic) and of `DataSource` ordering."""

import io
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
from PIL import Image

from data_pipeline import cifar10, pipeline

CLASSES = ("cat", "dog", "eel")


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_tree(root, per_class=3, size=32, fmt="PNG", ext=".png"):
    """root/{train,val}/<class>/<i>.png with random pixels; returns {path: array}."""
    arrays = {}
    for s, split in enumerate(("train", "val")):
        for c, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(per_class if split == "train" else 2):
                array = _rgb(size, size, seed=1000 * s + 100 * c + i)
                path = root / split / name / f"{i}{ext}"
                Image.fromarray(array).save(path, fmt)
                arrays[str(path)] = array
    return arrays


def _collect(dataset):
    images, labels = [], []
    for x, y in dataset.as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


# ----------------------------------------------------------------------------- folder

def test_folder_pixels_labels_and_class_names(tmp_path):
    arrays = _write_tree(tmp_path)
    source = pipeline.load_data("folder", str(tmp_path), "cifar", seed=3)
    assert source.class_names == list(CLASSES)
    assert (source.num_train, source.num_val, source.stored_size) == (9, 6, 32)
    assert source.skipped == []
    images, labels = _collect(source.val_dataset(4))
    assert images.dtype == np.uint8 and labels.dtype == np.int32 and images.shape == (6, 32, 32, 3)
    # Fixed order: classes sorted, then file names; PNG is lossless, 32x32 is the stored size.
    for k, (c, i) in enumerate([(c, i) for c in range(3) for i in range(2)]):
        path = tmp_path / "val" / CLASSES[c] / f"{i}.png"
        np.testing.assert_array_equal(images[k], arrays[str(path)])
        assert labels[k] == c
    train_images, train_labels = _collect(source.train_dataset(3, epoch=0))
    assert train_images.shape == (9, 32, 32, 3)
    by_bytes = {a.tobytes(): CLASSES.index(p.split(os.sep)[-2])
                for p, a in arrays.items() if f"{os.sep}train{os.sep}" in p}
    assert sorted(by_bytes[x.tobytes()] for x in train_images) == sorted(train_labels.tolist())
    assert all(by_bytes[x.tobytes()] == y for x, y in zip(train_images, train_labels))


def test_folder_any_size_becomes_the_stored_size(tmp_path):
    for split in ("train", "val"):
        for c, (h, w) in enumerate([(20, 30), (300, 200)]):
            os.makedirs(tmp_path / split / f"c{c}")
            Image.fromarray(np.full((h, w, 3), 90 + c, np.uint8)).save(
                tmp_path / split / f"c{c}" / "a.jpg", quality=100)
    source = pipeline.load_data("folder", str(tmp_path), "paper")
    images, labels = _collect(source.val_dataset(2))
    assert images.shape == (2, 256, 256, 3)
    for image, label in zip(images, labels):
        assert np.abs(image.astype(int) - (90 + label)).max() <= 2  # flat colour survives


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


COLOUR_MODES = {
    "cmyk.jpg": ("CMYK", "JPEG", 12),
    "gray.png": ("L", "PNG", 0),
    "gray.jpg": ("L", "JPEG", 3),
    "palette.png": ("P", "PNG", 0),
    "rgba.png": ("RGBA", "PNG", 0),
    "palette.bmp": ("P", "BMP", 0),
    "palette.gif": ("P", "GIF", 0),
}


def test_colour_modes_become_rgb(tmp_path):
    base = Image.fromarray(_rgb(32, 32, seed=5))
    for split in ("train", "val"):
        for name, (mode, fmt, _) in COLOUR_MODES.items():
            os.makedirs(tmp_path / split / "a", exist_ok=True)
            (tmp_path / split / "a" / name).write_bytes(_encode(base.convert(mode), fmt))
        os.makedirs(tmp_path / split / "b")
        Image.fromarray(_rgb(32, 32, seed=6)).save(tmp_path / split / "b" / "x.png")
    source = pipeline.load_data("folder", str(tmp_path), "cifar")
    assert source.skipped == []
    images, _ = _collect(source.val_dataset(16))
    for image, name in zip(images, sorted(COLOUR_MODES)):
        with Image.open(tmp_path / "val" / "a" / name) as reference:  # PIL as the referee
            want = np.asarray(reference.convert("RGB"))
        assert image.shape == (32, 32, 3)
        assert np.abs(image.astype(int) - want).max() <= COLOUR_MODES[name][2], name


def _bad_tree(tmp_path):
    _write_tree(tmp_path)
    good = _encode(Image.fromarray(_rgb(32, 32, 9)), "JPEG")
    bad = {"truncated.jpg": good[:len(good) // 2], "zero.jpg": b"", "text.jpg": b"just some text\n"}
    for name, data in bad.items():
        (tmp_path / "train" / "dog" / name).write_bytes(data)
    return {str(tmp_path / "train" / "dog" / n) for n in bad}


def test_bad_files_are_skipped_and_listed(tmp_path):
    bad = _bad_tree(tmp_path)
    source = pipeline.load_data("folder", str(tmp_path), "cifar")
    assert {path for path, _ in source.skipped} == bad
    reasons = dict(source.skipped)
    assert "empty" in reasons[str(tmp_path / "train" / "dog" / "zero.jpg")]
    assert "not an image" in reasons[str(tmp_path / "train" / "dog" / "text.jpg")]
    assert "truncated" in reasons[str(tmp_path / "train" / "dog" / "truncated.jpg")]
    assert source.num_train == 9
    images, _ = _collect(source.train_dataset(1, epoch=0))  # trains to the end
    assert len(images) == 9


def test_bad_files_with_strict_stop_before_training(tmp_path):
    _bad_tree(tmp_path)
    with pytest.raises(ValueError, match=r"3 unreadable image file\(s\).*truncated\.jpg"):
        pipeline.load_data("folder", str(tmp_path), "cifar", strict=True)


def test_folder_tree_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*data_dir="):
        pipeline.load_data("folder", str(tmp_path / "nope"), "cifar")
    with pytest.raises(ValueError, match="needs --data_dir"):
        pipeline.load_data("folder", None, "cifar")
    _write_tree(tmp_path)
    os.makedirs(tmp_path / "train" / "fox")
    (tmp_path / "train" / "fox" / "notes.txt").write_text("no images here")
    os.makedirs(tmp_path / "val" / "fox")
    with pytest.raises(ValueError, match=r"class folder .*fox holds no images"):
        pipeline.load_data("folder", str(tmp_path), "cifar")
    os.rename(tmp_path / "val" / "fox", tmp_path / "val" / "gnu")
    with pytest.raises(ValueError, match=r"missing in val: \['fox'\], only in val: \['gnu'\]"):
        pipeline.load_data("folder", str(tmp_path), "cifar")


def test_missing_val_split_and_unknown_dataset(tmp_path):
    _write_tree(tmp_path)
    os.rename(tmp_path / "val", tmp_path / "valid")
    with pytest.raises(FileNotFoundError, match="val is missing"):
        pipeline.load_data("folder", str(tmp_path), "cifar")
    with pytest.raises(ValueError, match="Unknown dataset"):
        pipeline.load_data("imagenet", str(tmp_path), "cifar")


def test_class_whose_files_are_all_bad_is_an_error(tmp_path):
    _write_tree(tmp_path)
    for path in (tmp_path / "train" / "eel").iterdir():
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="eel holds no readable image"):
        pipeline.load_data("folder", str(tmp_path), "cifar")


# ----------------------------------------------------------------------------- CIFAR-10

def _write_cifar(folder, per_batch=3):
    """A tiny cifar-10-batches-py in the original layout; returns the arrays it holds."""
    os.makedirs(folder)
    out = {}
    for b, name in enumerate(cifar10.TRAIN_BATCHES + (cifar10.VAL_BATCH,)):
        images = np.stack([_rgb(32, 32, seed=50 + 10 * b + i) for i in range(per_batch)])
        labels = [(b + i) % 10 for i in range(per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels,
                 b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, 3072),  # R, G, B planes
                 b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        out[name] = (images, np.array(labels))
    names = [b"plane", b"car", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
             b"lorry"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return out


def _check_cifar(source, arrays):
    assert source.class_names[-1] == "lorry" and len(source.class_names) == 10
    assert (source.num_train, source.num_val, source.stored_size) == (15, 3, 32)
    images, labels = _collect(source.val_dataset(2))
    np.testing.assert_array_equal(images, arrays["test_batch"][0])
    np.testing.assert_array_equal(labels, arrays["test_batch"][1])
    train = np.concatenate([arrays[n][0] for n in cifar10.TRAIN_BATCHES])
    got, _ = _collect(source.train_dataset(5, epoch=0))
    assert sorted(x.tobytes() for x in got) == sorted(x.tobytes() for x in train)


def test_cifar10_folder_and_archive(tmp_path):
    arrays = _write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    _check_cifar(pipeline.load_data("cifar10", str(tmp_path / "data"), "cifar"), arrays)
    archive_dir = tmp_path / "archive"
    os.makedirs(archive_dir)
    with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "data" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check_cifar(pipeline.load_data("cifar10", str(archive_dir), "cifar"), arrays)


def test_cifar10_resized_for_the_paper_model(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    source = pipeline.load_data("cifar10", str(tmp_path), "paper")
    images, _ = _collect(source.val_dataset(3))
    assert images.shape == (3, 256, 256, 3) and images.dtype == np.uint8


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _Exploit(marker), b"labels": []}, f, protocol=2)
    refused = r"not a safe CIFAR-10 batch.*Refused to load `(posix|os|nt)\.system`"
    with pytest.raises(ValueError, match=refused):
        pipeline.load_data("cifar10", str(tmp_path), "cifar")
    assert not marker.exists()
    payload = pickle.dumps(_Exploit(marker))  # any protocol
    with pytest.raises(pickle.UnpicklingError):
        cifar10.RestrictedUnpickler(io.BytesIO(payload)).load()
    assert not marker.exists()


def test_cifar10_offline_with_nothing_cached(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    os.makedirs(tmp_path / "keras")
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(FileNotFoundError) as error:
        pipeline.load_data("cifar10", None, "cifar")
    message = str(error.value)
    assert calls == [cifar10.URL]
    assert "could not be downloaded" in message and "cifar-10-python.tar.gz" in message
    assert "--data_dir" in message and "--dataset=synthetic" in message
    assert "\n" not in message and "Traceback" not in message
    with pytest.raises(FileNotFoundError, match="data_dir does not exist"):
        pipeline.load_data("cifar10", str(tmp_path / "missing"), "cifar")


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_shapes_and_learnable():
    source = pipeline.load_data("synthetic", None, "cifar", num_classes=4, synthetic_examples=200,
                                seed=1)
    assert (source.num_train, source.num_val, len(source.class_names)) == (200, 20, 4)
    train_x, train_y = _collect(source.train_dataset(50, epoch=0))
    val_x, val_y = _collect(source.val_dataset(8))
    assert train_x.shape == (200, 32, 32, 3) and train_x.dtype == np.uint8
    # Nearest class-mean colour classifies held-out images: the classes are learnable.
    means = np.stack([train_x[train_y == c].mean(axis=(0, 1, 2)) for c in range(4)])
    predicted = np.argmin(((val_x.mean(axis=(1, 2))[:, None] - means) ** 2).sum(-1), axis=1)
    assert (predicted == val_y).mean() >= 0.9


# ----------------------------------------------------------------------------- order

def _ids(dataset):
    return [x.tobytes() for batch, _ in dataset.as_numpy_iterator() for x in batch]


@pytest.mark.parametrize("kind", ["synthetic", "folder", "folder_cached"])
def test_order_is_a_seeded_permutation_and_resumes_exactly(tmp_path, kind):
    if kind == "synthetic":
        source = pipeline.load_data("synthetic", None, "cifar", num_classes=3,
                                    synthetic_examples=24, seed=5)
    else:
        _write_tree(tmp_path, per_class=8, size=8)  # 24 images, resized 8 -> 32
        source = pipeline.load_data("folder", str(tmp_path), "cifar", seed=5,
                                    cache=kind == "folder_cached")
    epoch1 = _ids(source.train_dataset(4, epoch=1))
    assert len(epoch1) == 24 and len(set(epoch1)) == 24   # every example once
    assert epoch1 == _ids(source.train_dataset(4, epoch=1))
    assert epoch1 != _ids(source.train_dataset(4, epoch=2))
    assert _ids(source.train_dataset(4, epoch=1, skip_batches=2)) == epoch1[8:]
    other_seed = pipeline.load_data("synthetic", None, "cifar", num_classes=3,
                                    synthetic_examples=24, seed=6) if kind == "synthetic" else None
    if other_seed is not None:
        assert _ids(other_seed.train_dataset(4, epoch=1)) != epoch1
    shards = [_ids(source.train_dataset(2, epoch=1, num_shards=3, shard_index=i))
              for i in range(3)]
    assert [len(s) for s in shards] == [8, 8, 8]
    assert sorted(sum(shards, [])) == sorted(epoch1)        # disjoint and covering
    # The workers' k-th batches together are the k-th batch of one pipeline of 3 x 2.
    single = _ids(source.train_dataset(6, epoch=1))
    for k in range(4):
        together = sum((s[2 * k:2 * k + 2] for s in shards), [])
        assert sorted(together) == sorted(single[6 * k:6 * k + 6])
    in_order = _ids(source.eval_train_dataset(5))
    assert sorted(in_order) == sorted(epoch1) and in_order == _ids(source.eval_train_dataset(5))
    first = _ids(source.sample_images(5).map(lambda x: (x, 0)))
    assert len(first) == 5 and first == _ids(source.sample_images(5).map(lambda x: (x, 0)))
    assert len(_ids(source.val_dataset(5))) == source.num_val  # partial last batch kept


def test_cached_folder_equals_decoded_folder(tmp_path):
    _write_tree(tmp_path, per_class=4, size=20)
    plain = pipeline.load_data("folder", str(tmp_path), "cifar", seed=2)
    cached = pipeline.load_data("folder", str(tmp_path), "cifar", seed=2, cache=True)
    assert _ids(plain.train_dataset(3, epoch=4)) == _ids(cached.train_dataset(3, epoch=4))
    assert _ids(plain.val_dataset(4)) == _ids(cached.val_dataset(4))


def test_train_dataset_argument_errors():
    source = pipeline.load_data("synthetic", None, "cifar", num_classes=2, synthetic_examples=8)
    with pytest.raises(ValueError, match="shard_index=3"):
        source.train_dataset(2, epoch=0, num_shards=3, shard_index=3)
    with pytest.raises(ValueError, match="batch_size=0"):
        source.train_dataset(0, epoch=0)
    with pytest.raises(ValueError, match="num_classes=1"):
        pipeline.load_data("synthetic", None, "cifar", num_classes=1)


def test_resize_and_center_rounds_float_images_of_the_stored_size():
    from data_pipeline import preprocess

    images = np.array([[[[254.7, 0.4, 300.0]]]], np.float32)  # [1, 1, 1, 3]
    np.testing.assert_array_equal(preprocess.resize_and_center(images, 1), [[[[255, 0, 255]]]])
