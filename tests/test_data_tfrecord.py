"""Tests of the TFRecord writer (`prepare`) and reader: round trip, resuming, order."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_pipeline import pipeline, tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("ant", "bee")


def _write_tree(root, per_class=6):
    """root/{train,val}/<class>/*.png (lossless, 32x32) and one palette BMP; {bytes: label}."""
    expected = {"train": {}, "val": {}}
    for split in ("train", "val"):
        for c, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(per_class if split == "train" else 2):
                rng = np.random.default_rng([len(split), c, i])
                array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(array).save(root / split / name / f"{i}.png")
                expected[split][array.tobytes()] = c
        palette = Image.fromarray(np.random.default_rng([9, len(split)]).integers(
            0, 256, (32, 32, 3), dtype=np.uint8)).convert("P")
        palette.save(root / split / "bee" / "palette.bmp")
        expected[split][np.asarray(palette.convert("RGB")).tobytes()] = 1
    return expected


def _ids(dataset):
    return [x.tobytes() for batch, _ in dataset.as_numpy_iterator() for x in batch]


def test_round_trip_pixels_labels_and_schema(tmp_path):
    expected = _write_tree(tmp_path / "tree")
    out = tmp_path / "shards"
    metadata = tfrecord.write_shards(str(tmp_path / "tree"), str(out), 3, progress=False)
    assert sorted(os.listdir(out)) == sorted(
        [".prepare.json", "dataset.json"] + [f"{s}-0000{i}-of-00003.tfrecord"
                                             for s in ("train", "val") for i in range(3)])
    with open(out / "dataset.json") as f:
        assert json.load(f)["class_names"] == list(CLASSES)
    assert metadata["splits"]["train"]["num_examples"] == 13
    # The schema, read with the protobuf API rather than the reader under test.
    record = next(iter(tf.data.TFRecordDataset(str(out / "val-00000-of-00003.tfrecord"))))
    features = tf.train.Example.FromString(record.numpy()).features.feature
    label = features["image/class/label"].int64_list.value[0]
    assert features["image/class/text"].bytes_list.value[0].decode() == CLASSES[label]
    assert features["image/encoded"].bytes_list.value[0][:4] in (b"\x89PNG",)
    source = pipeline.load_data("tfrecord", str(out), "cifar")
    assert source.class_names == list(CLASSES) and (source.num_train, source.num_val) == (13, 5)
    for split, dataset in (("val", source.val_dataset(2)),
                           ("train", source.train_dataset(1, epoch=0))):
        seen = {}
        for images, labels in dataset.as_numpy_iterator():
            for image, label in zip(images, labels):
                seen[image.tobytes()] = label
        assert seen == expected[split]


def test_train_order_resume_epochs_and_worker_shards(tmp_path):
    _write_tree(tmp_path / "tree", per_class=12)          # 25 train images
    out = str(tmp_path / "shards")
    tfrecord.write_shards(str(tmp_path / "tree"), out, 4, progress=False)
    source = pipeline.load_data("tfrecord", out, "cifar", seed=1, shuffle_buffer=8)
    epoch = _ids(source.train_dataset(5, epoch=3))
    assert len(epoch) == 25 and len(set(epoch)) == 25
    assert epoch == _ids(source.train_dataset(5, epoch=3))
    assert epoch != _ids(source.train_dataset(5, epoch=4))
    assert _ids(source.train_dataset(5, epoch=3, skip_batches=2)) == epoch[10:]
    shards = [_ids(source.train_dataset(4, epoch=3, num_shards=3, shard_index=i))
              for i in range(3)]
    assert [len(s) for s in shards] == [8, 8, 8]
    assert len(set(sum(shards, []))) == 24
    single = _ids(source.train_dataset(12, epoch=3))  # the workers' k-th batches together
    for k in range(2):
        together = sum((s[4 * k:4 * k + 4] for s in shards), [])
        assert sorted(together) == sorted(single[12 * k:12 * k + 12])
    assert sorted(_ids(source.eval_train_dataset(10))) == sorted(epoch)
    cached = pipeline.load_data("tfrecord", out, "cifar", seed=1, cache=True)
    assert sorted(_ids(cached.train_dataset(5, epoch=0))) == sorted(epoch)
    sample = _ids(source.sample_images(4).map(lambda x: (x, 0)))
    assert len(sample) == 4 and set(sample) <= set(epoch)


def _count(path):
    return sum(1 for _ in tf.data.TFRecordDataset(path))


def test_killed_run_leaves_no_complete_looking_shard_and_resumes(tmp_path, monkeypatch):
    _write_tree(tmp_path / "tree")
    out = tmp_path / "shards"
    real_encode, calls = tfrecord.encode_example, []

    def dies_on_the_ninth_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of a shard
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(tfrecord, "encode_example", dies_on_the_ninth_image)
    with pytest.raises(KeyboardInterrupt):
        tfrecord.write_shards(str(tmp_path / "tree"), str(out), 2, num_workers=1, progress=False)
    monkeypatch.setattr(tfrecord, "encode_example", real_encode)
    with open(out / ".prepare.json") as f:
        assert json.load(f)["skipped"] == []
    # 13 train images -> shards of 7 and 6: the 9th image was the 2nd of train-00001.
    finished = sorted(n for n in os.listdir(out) if n.endswith(".tfrecord"))
    assert finished == ["train-00000-of-00002.tfrecord"]
    assert _count(str(out / finished[0])) == 7
    assert not os.path.exists(out / "dataset.json")
    with pytest.raises(FileNotFoundError, match="did not finish"):
        pipeline.load_data("tfrecord", str(out), "cifar")
    # A kill -9 leaves a temp file; it must not be taken for a shard.
    (out / ".train-00001-of-00002.tfrecord.tmp-99999").write_bytes(b"half a shard")
    before = os.stat(out / finished[0]).st_mtime_ns
    tfrecord.write_shards(str(tmp_path / "tree"), str(out), 2, progress=False)
    assert os.stat(out / finished[0]).st_mtime_ns == before  # finished shards are kept
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
    source = pipeline.load_data("tfrecord", str(out), "cifar")
    assert len(_ids(source.train_dataset(1, epoch=0))) == 13


def test_prepare_refuses_another_tree_and_stops_on_bad_files_with_strict(tmp_path):
    _write_tree(tmp_path / "tree")
    out = str(tmp_path / "shards")
    tfrecord.write_shards(str(tmp_path / "tree"), out, 2, progress=False)
    (tmp_path / "tree" / "train" / "ant" / "extra.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="another folder tree"):
        tfrecord.write_shards(str(tmp_path / "tree"), out, 2, progress=False)
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match=r"extra\.jpg \(empty file\)"):
        tfrecord.write_shards(str(tmp_path / "tree"), str(fresh), 2, strict=True, progress=False)
    assert os.listdir(fresh) == []
    metadata = tfrecord.write_shards(str(tmp_path / "tree"), str(fresh), 2, progress=False)
    assert metadata["skipped"] == [[str(tmp_path / "tree" / "train" / "ant" / "extra.jpg"),
                                    "empty file"]]
    with pytest.raises(ValueError, match="shards=0"):
        tfrecord.write_shards(str(tmp_path / "tree"), str(tmp_path / "x"), 0)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipeline.load_data("tfrecord", str(tmp_path / "nope"), "cifar")
    with pytest.raises(FileNotFoundError, match="python main.py prepare"):
        pipeline.load_data("tfrecord", str(tmp_path), "cifar")
    with pytest.raises(ValueError, match="needs --data_dir"):
        pipeline.load_data("tfrecord", None, "cifar")


def test_prepare_command(tmp_path):
    _write_tree(tmp_path / "tree", per_class=2)
    command = [sys.executable, "main.py", "prepare", f"--data_dir={tmp_path / 'tree'}",
               f"--output_dir={tmp_path / 'out'}", "--shards=2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert os.path.exists(tmp_path / "out" / "val-00001-of-00002.tfrecord")
    missing = subprocess.run(command[:4], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("Error: prepare needs --output_dir")
