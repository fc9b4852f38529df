"""TFRecord shards in the schema TF Model Garden uses for ImageNet: the writer behind
`main.py prepare` and the reader, side by side so that they share one schema.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import sys
import threading
import time

import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf.rundir import atomic_write_text, read_json
from data_pipeline import sources

METADATA = "dataset.json"   # class names, shard files and counts; written last
PLAN = ".prepare.json"      # fingerprint of the folder tree and the skipped files; written first
FORMAT = "imagenet-tfrecord-v1"

# Schema (TF Model Garden ImageNet). Labels are 0-based indices into the sorted class names.
ENCODED = "image/encoded"
LABEL = "image/class/label"
TEXT = "image/class/text"
FORMAT_KEY = "image/format"
FILENAME = "image/filename"
HEIGHT = "image/height"
WIDTH = "image/width"
_FEATURES = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def shard_name(split: str, index: int, shards: int) -> str:
    """`train-00003-of-00016.tfrecord`."""
    return f"{split}-{index:05d}-of-{shards:05d}.tfrecord"


# ----------------------------------------------------------------------------- writer

def encode_example(image: bytes, label: int, class_name: str, *, filename: str = "",
                   image_format: str = "", height: int = 0, width: int = 0) -> bytes:
    """One serialized `tf.train.Example` of the schema."""
    def b(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def i(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    features = {ENCODED: b(image), LABEL: i(label), TEXT: b(class_name.encode()),
                FORMAT_KEY: b(image_format.encode()), FILENAME: b(filename.encode()),
                HEIGHT: i(height), WIDTH: i(width)}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _image_record(path: str) -> tuple[bytes, str, int, int]:
    from PIL import Image

    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        fmt, (width, height) = (image.format or "").lower(), image.size
        if sources.is_palette_bmp(data[:30]):
            # tf.io.decode_bmp ignores palettes: store these losslessly as PNG.
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "PNG")
            data, fmt = buffer.getvalue(), "png"
    return data, fmt, height, width


class _Progress:
    """A thread-safe one-line progress bar on stderr."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled
        self.done, self.start, self.shown = 0, time.monotonic(), 0.0
        self.lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            now = time.monotonic()
            if self.enabled and (now - self.shown > 0.5 or self.done == self.total):
                self.shown = now
                rate = self.done / max(now - self.start, 1e-9)
                width = 30
                filled = int(width * self.done / max(self.total, 1))
                sys.stderr.write(f"\r{self.label} [{'=' * filled}{'.' * (width - filled)}] "
                                 f"{self.done}/{self.total} images, {rate:.0f}/s")
                if self.done == self.total:
                    sys.stderr.write("\n")
                sys.stderr.flush()


def _fingerprint(data_dir: str, class_names: list[str], listing: dict, shards: int,
                 seed: int) -> str:
    digest = hashlib.sha256(json.dumps([FORMAT, class_names, shards, seed]).encode())
    for split in sources.SPLITS:
        paths, labels = listing[split]
        for path, label in zip(paths, labels):
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, data_dir)}\0{label}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _write_shard(path: str, paths: list[str], labels: np.ndarray, class_names: list[str],
                 data_dir: str, progress: _Progress) -> int:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for file, label in zip(paths, labels):
                try:
                    data, fmt, height, width = _image_record(file)
                except OSError as e:
                    raise FileNotFoundError(f"{file} changed while shards were written ({e}). "
                                            f"Rerun prepare.") from None
                writer.write(encode_example(data, int(label), class_names[label],
                                            filename=os.path.relpath(file, data_dir),
                                            image_format=fmt, height=height, width=width))
                progress.update()
        # Only a finished shard gets its final name: a killed run leaves a temp file.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return len(paths)


def write_shards(data_dir: str, output_dir: str, shards: int = 16, *, strict: bool = False,
                 num_workers: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Writes a folder tree's train and val splits as TFRecord shards (`main.py prepare`).

    Every file is validated first (see `sources.validate_image_files`); unreadable ones are
    skipped and listed (or, with strict, stop the run before anything is written). Files go
    to shards in a seeded random order, so each shard mixes the classes. Shards are written
    in parallel, each to a temporary name that is renamed when it is complete; a rerun
    with the same tree and shard count skips the finished shards and the validation.
    OUTPUT_DIR/dataset.json (class names, shard files, counts) is written last.

    Args:
        data_dir: root of a folder tree with train/<class>/* and val/<class>/*.
        output_dir: where shards and dataset.json go; created if missing.
        shards: shards per split.
        strict: stop on any unreadable file instead of skipping it.
        num_workers: parallel shard writers; default: the CPU count.
        seed: seed of the assignment of files to shards.
        progress: show a progress bar on stderr.

    Returns:
        The contents of dataset.json.

    Raises:
        ValueError: bad shard count, a bad tree (see `sources.scan_folder_tree`), an
            output_dir that holds shards of another tree or shard count, or (strict)
            unreadable files.
        FileNotFoundError: data_dir missing.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"`shards` must be a positive integer. Received: shards={shards!r}")
    if not output_dir:
        raise ValueError(f"prepare needs an output folder. Received: output_dir={output_dir!r}")
    class_names, listing = sources.scan_folder_tree(data_dir)
    fingerprint = _fingerprint(data_dir, class_names, listing, shards, seed)
    os.makedirs(output_dir, exist_ok=True)
    plan = _plan(output_dir, fingerprint, data_dir, class_names, listing, strict=strict)
    bad_paths = {path for path, _ in plan["skipped"]}

    for name in os.listdir(output_dir):  # temp files of a killed run
        if name.startswith(".") and ".tfrecord.tmp-" in name:
            os.remove(os.path.join(output_dir, name))

    tasks, splits = _shard_tasks(output_dir, listing, bad_paths, shards, seed)
    metadata = {"format": FORMAT, "class_names": class_names, "splits": splits,
                "source": os.path.abspath(data_dir), "fingerprint": fingerprint,
                "skipped": plan["skipped"]}
    _write_pending(tasks, output_dir, class_names, data_dir, num_workers=num_workers, progress=progress)
    atomic_write_text(os.path.join(output_dir, METADATA), json.dumps(metadata, indent=1))
    return metadata


def _plan(output_dir: str, fingerprint: str, data_dir: str, class_names: list[str], listing: dict, *,
          strict: bool) -> dict:
    """OUTPUT_DIR/.prepare.json: read back when prepare resumes the same tree, else written
    after every file is validated. Holds the fingerprint and the unreadable files skipped.

    Raises:
        ValueError: an output_dir that holds shards of another tree or shard count, or
            (strict) unreadable files.
    """
    plan_path = os.path.join(output_dir, PLAN)
    if os.path.exists(plan_path):
        plan = read_json(plan_path, "delete it and rerun prepare to start the shards over")
        if plan.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{output_dir} holds shards of another folder tree, shard count or version of "
                f"the files. Use an empty --output_dir, or delete this one. "
                f"Received: output_dir={output_dir!r}")
        logging.info("Resuming the shards in %s.", output_dir)
        if strict and plan["skipped"]:
            path, reason = plan["skipped"][0]
            raise ValueError(f"{len(plan['skipped'])} unreadable image file(s), e.g. {path} "
                             f"({reason}). Remove or replace them, or run without --strict.")
        return plan
    if os.path.exists(os.path.join(output_dir, METADATA)) or any(
            name.endswith(".tfrecord") for name in os.listdir(output_dir)):
        raise ValueError(f"{output_dir} already holds TFRecord files that prepare did not "
                         f"start there. Use an empty --output_dir. "
                         f"Received: output_dir={output_dir!r}")
    skipped = []
    for split in sources.SPLITS:
        paths, labels = listing[split]
        split_dir = os.path.join(data_dir, split)
        files, bad = sources.validate_image_files(paths, labels, strict=strict,
                                                  where=split_dir)
        sources.check_class_counts(files.labels, class_names, split_dir)
        skipped += [[path, reason] for path, reason in bad]
    plan = {"fingerprint": fingerprint, "skipped": skipped}
    atomic_write_text(plan_path, json.dumps(plan))
    return plan


def _shard_tasks(output_dir: str, listing: dict, bad_paths: set, shards: int,
                 seed: int) -> tuple[list, dict]:
    """Each split's readable files in a seeded random order, cut into `shards` parts.

    Returns:
        (tasks, splits): a (shard path, file paths, labels) task per shard, and the
        "splits" entry of dataset.json.
    """
    tasks, splits = [], {}
    for split in sources.SPLITS:
        paths, labels = listing[split]
        keep = [i for i, p in enumerate(paths) if p not in bad_paths]
        order = np.random.default_rng([sources.seed_entropy(seed), sources.SPLITS.index(split)]
                                      ).permutation(keep)
        names, counts = [], []
        for index, part in enumerate(np.array_split(order, shards)):
            names.append(shard_name(split, index, shards))
            counts.append(len(part))
            tasks.append((os.path.join(output_dir, names[-1]), [paths[i] for i in part],
                          labels[part]))
        splits[split] = {"num_examples": len(keep), "shards": names, "counts": counts}
    return tasks, splits


def _write_pending(tasks: list, output_dir: str, class_names: list[str], data_dir: str, *,
                   num_workers: int | None, progress: bool) -> None:
    """Writes the shards of `tasks` that do not exist yet, in parallel; stops at the first
    failure (the finished shards stay)."""
    pending = [t for t in tasks if not os.path.exists(t[0])]
    todo = sum(len(t[1]) for t in pending)
    logging.info("Writing %d of %d shards (%d images) to %s.", len(pending), len(tasks), todo,
                 output_dir)
    bar = _Progress(todo, "prepare", enabled=progress and todo > 0)
    workers = max(1, min(len(pending), num_workers or os.cpu_count() or 1))
    failed = threading.Event()

    def write(path, paths, labels):
        if failed.is_set():
            return 0
        try:
            return _write_shard(path, paths, labels, class_names, data_dir, bar)
        except BaseException:
            failed.set()
            raise

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(write, *task) for task in pending]
        for future in concurrent.futures.as_completed(futures):
            future.result()


# ----------------------------------------------------------------------------- reader

def read_metadata(data_dir: str | None) -> dict:
    """Reads DATA_DIR/dataset.json and checks that every shard it lists exists.

    Raises:
        ValueError: no data_dir.
        FileNotFoundError: data_dir, dataset.json or a shard is missing.
    """
    sources.require_folder(data_dir, "--dataset=tfrecord needs --data_dir: the --output_dir of "
                           "`python main.py prepare`", "TFRecord folder")
    path = os.path.join(data_dir, METADATA)
    if not os.path.isfile(path):
        if os.path.exists(os.path.join(data_dir, PLAN)):
            hint = "`prepare` did not finish there; rerun it with the same flags to complete it"
        else:
            hint = ("write shards with `python main.py prepare --data_dir=FOLDER_TREE "
                    f"--output_dir={data_dir}`")
        raise FileNotFoundError(f"{data_dir} has no {METADATA}: {hint}. "
                                f"Received: data_dir={data_dir!r}")
    metadata = read_json(path, "rerun `python main.py prepare` with the same flags to write it again")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a shard index this version reads "
                         f"(format {metadata.get('format')!r}, expected {FORMAT!r}).")
    for split in sources.SPLITS:
        for name in metadata["splits"][split]["shards"]:
            if not os.path.isfile(os.path.join(data_dir, name)):
                raise FileNotFoundError(f"Shard {name} listed in {path} is missing. Rerun "
                                        f"prepare into an empty folder.")
    return metadata


def split_files(data_dir: str, metadata: dict, split: str) -> list[str]:
    """The shard paths of a split, in order."""
    return [os.path.join(data_dir, name) for name in metadata["splits"][split]["shards"]]


def record_dataset(files: list[str], cycle_length: int = 16) -> tf.data.Dataset:
    """Serialized records of `files`, read with a deterministic parallel interleave:
    record k of each of `cycle_length` open files in turn."""
    files_ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string))
    return files_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
        cycle_length=max(1, min(cycle_length, len(files))), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def parse_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Serialized example -> (encoded image bytes, int32 label)."""
    features = tf.io.parse_single_example(serialized, _FEATURES)
    return features[ENCODED], tf.cast(features[LABEL], tf.int32)


def decode_example(serialized: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Serialized example -> (uint8 [size, size, 3] image, int32 label); see
    `sources.decode_image`."""
    encoded, label = parse_example(serialized)
    return sources.decode_image(encoded, size), label
