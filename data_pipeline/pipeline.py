"""Host-side tf.data pipelines: `load_data` picks a source and returns a `DataSource`, whose
datasets give uint8 stored-size images and int32 labels (order -> skip -> decode -> batch ->
prefetch). Random augmentation is not here: it runs on the device (see augment.py).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf.config import DATASETS
from data_pipeline import cifar10, preprocess, sources, tfrecord

AUTOTUNE = tf.data.AUTOTUNE
# Purposes of the seeded random streams, so that they never coincide.
_TRAIN_ORDER, _SAMPLE = 0, 1


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([sources.seed_entropy(seed), *salt])


def epoch_order(n: int, seed: int, epoch: int, num_shards: int = 1,
                shard_index: int = 0) -> np.ndarray:
    """The example indices one worker visits in an epoch: a full permutation of range(n)
    seeded by (seed, epoch), cut to a multiple of num_shards and dealt out round-robin.

    Every worker gets n // num_shards indices; the workers' sets are disjoint.
    """
    order = _rng(seed, _TRAIN_ORDER, epoch).permutation(n)
    order = order[:n - n % num_shards]
    return order[shard_index::num_shards]


class _ArraySplit:
    """Images already in memory (CIFAR-10, synthetic, or a cached split)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels.astype(np.int32)
        self._tensors = None

    def __len__(self) -> int:
        return len(self.labels)

    def _as_tensors(self):
        if self._tensors is None:
            with tf.device("/CPU:0"):
                # Captured by reference in the dataset functions, not copied per epoch.
                self._tensors = tf.constant(self.images), tf.constant(self.labels)
        return self._tensors

    def batches(self, order: np.ndarray, batch_size: int, drop_remainder: bool,
                size: int) -> tf.data.Dataset:
        images, labels = self._as_tensors()

        def gather(index):
            batch = tf.gather(images, index)
            if self.images.shape[1:3] != (size, size):
                batch = preprocess.resize_and_center(batch, size)
            return batch, tf.gather(labels, index)

        ds = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.map(gather, num_parallel_calls=AUTOTUNE, deterministic=True)


class _FileSplit:
    """Validated image files, decoded in parallel."""

    def __init__(self, files: sources.ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def batches(self, order: np.ndarray, batch_size: int, drop_remainder: bool,
                size: int) -> tf.data.Dataset:
        f = self.files
        ds = tf.data.Dataset.from_tensor_slices((
            tf.constant(f.paths[order].tolist(), tf.string),
            tf.constant(f.contents[order].tolist(), tf.string),
            tf.constant(f.labels[order], tf.int32)))
        ds = ds.map(lambda path, contents, label: (
            sources.read_and_decode(path, contents, size), label),
            num_parallel_calls=AUTOTUNE, deterministic=True)
        # The files were validated with this decoder; a file changed since is skipped.
        ds = ds.ignore_errors(log_warning=True)
        return ds.batch(batch_size, drop_remainder=drop_remainder)


class _RecordSplit:
    """TFRecord shards: streamed, so a shard-order permutation plus a record shuffle buffer."""

    def __init__(self, files: list[str], num_examples: int, shuffle_buffer: int):
        self.files, self.num_examples, self.shuffle_buffer = files, num_examples, shuffle_buffer

    def __len__(self) -> int:
        return self.num_examples

    def _decoded(self, records: tf.data.Dataset, size: int) -> tf.data.Dataset:
        ds = records.map(lambda r: tfrecord.decode_example(r, size),
                         num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds.ignore_errors(log_warning=True)

    def train(self, seed: int, epoch: int, batch_size: int, skip_batches: int,
              num_shards: int, shard_index: int, size: int) -> tf.data.Dataset:
        rng = _rng(seed, _TRAIN_ORDER, epoch)
        files = [self.files[i] for i in rng.permutation(len(self.files))]
        records = tfrecord.record_dataset(files)
        records = records.shuffle(max(1, min(self.shuffle_buffer, self.num_examples)),
                                  seed=int(rng.integers(1 << 62)),
                                  reshuffle_each_iteration=False)
        if num_shards > 1:
            # Every worker reads the same shuffled stream and keeps every num_shards-th record,
            # like `epoch_order` deals out indices.
            records = records.shard(num_shards, shard_index)
        records = records.take(self.num_examples // num_shards)
        records = records.skip(skip_batches * batch_size)  # before decoding
        return self._decoded(records, size).batch(batch_size, drop_remainder=True)

    def ordered(self, batch_size: int, drop_remainder: bool, size: int,
                limit: int | None = None) -> tf.data.Dataset:
        records = tfrecord.record_dataset(self.files)
        if limit is not None:
            records = records.take(limit)
        return self._decoded(records, size).batch(batch_size, drop_remainder=drop_remainder)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _materialize(split, size: int, name: str) -> _ArraySplit:
    """Decodes a whole split once into a uint8 array (--cache)."""
    n = len(split)
    needed = n * size * size * 3
    memory = _physical_memory()
    if memory is not None and needed > 0.7 * memory:
        raise ValueError(f"--cache needs {needed / 2**30:.1f} GiB for the decoded {name} split "
                         f"but this machine has {memory / 2**30:.1f} GiB of memory. "
                         f"Run without --cache. Received: cache=True")
    logging.info("Caching the %s split: %d images, %.2f GiB.", name, n, needed / 2**30)
    if isinstance(split, _RecordSplit):
        ds = split.ordered(256, False, size)
    else:
        ds = split.batches(np.arange(n), 256, False, size)
    images, labels = np.empty((n, size, size, 3), np.uint8), np.empty(n, np.int32)
    k = 0
    for x, y in ds.prefetch(2).as_numpy_iterator():
        images[k:k + len(y)], labels[k:k + len(y)] = x, y
        k += len(y)
    return _ArraySplit(images[:k], labels[:k])


def _finish(ds: tf.data.Dataset, sharded: bool) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    # No model-based autotuning: AUTOTUNE parallelism then means "all cores", as fast here
    # (measured on 2 cores), and the tuner's thread, which competes with the train step
    # on small hosts, cannot hold up the end of an epoch (deleting an iterator waited
    # for it for up to ~4.5 s, in about half of the evaluations).
    options.autotune.enabled = False
    if sharded:  # already split per worker: tf.distribute must not shard again
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.prefetch(AUTOTUNE).with_options(options)


def _positive(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


class DataSource:
    """The train and val splits of a dataset, as tf.data pipelines of uint8 stored-size images.

    Attributes:
        name: the dataset ("cifar10", "folder", "tfrecord" or "synthetic").
        class_names: class names, index = label.
        stored_size: side S of the images the datasets yield (the variant's stored size).
        skipped: [(path, reason)] of the unreadable files that were left out.
        seed: seed of the shuffling.
    """

    def __init__(self, *, name: str, class_names: list[str], train, val, stored_size: int,
                 seed: int, skipped: list[tuple[str, str]] | None = None):
        self.name, self.class_names, self.stored_size, self.seed = (
            name, list(class_names), stored_size, seed)
        self.skipped = [tuple(s) for s in (skipped or [])]
        self._train, self._val = train, val

    @property
    def num_train(self) -> int:
        """Training examples."""
        return len(self._train)

    @property
    def num_val(self) -> int:
        """Validation examples."""
        return len(self._val)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def steps_per_epoch(self, batch_size: int, num_shards: int = 1) -> int:
        """Batches per epoch that `train_dataset` yields to each worker."""
        return (self.num_train // num_shards) // batch_size

    def train_dataset(self, batch_size: int, epoch: int, skip_batches: int = 0,
                      num_shards: int = 1, shard_index: int = 0) -> tf.data.Dataset:
        """One epoch of training batches, in an order fixed by (seed, epoch).

        In-memory and folder sources visit a full seeded permutation of the examples;
        TFRecord shards are streamed, so they get a seeded shard order, a deterministic
        interleave and a seeded shuffle buffer. Skipping happens before decoding, so
        resuming mid-epoch costs little and yields exactly the remaining batches.

        Workers are dealt every num_shards-th example of that order, so the union of the
        workers' k-th batches is the same set of examples as the k-th batch of one
        pipeline with num_shards times the batch size: every topology trains on the same
        images in the same steps.

        Args:
            batch_size: per-worker batch size.
            epoch: epoch number (0-based), part of the order's seed.
            skip_batches: batches of this epoch already trained on.
            num_shards: number of workers; each gets a disjoint num_train // num_shards
                examples.
            shard_index: this worker, in [0, num_shards).

        Returns:
            A dataset of (uint8 [batch_size, S, S, 3], int32 [batch_size]), partial
            batches dropped, not repeated.

        Raises:
            ValueError: on a bad argument.
        """
        batch_size = _positive("batch_size", batch_size)
        epoch = _positive("epoch", epoch, 0)
        skip_batches = _positive("skip_batches", skip_batches, 0)
        num_shards = _positive("num_shards", num_shards)
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"`shard_index` must be in [0, num_shards={num_shards}). "
                             f"Received: shard_index={shard_index!r}")
        size = self.stored_size
        if isinstance(self._train, _RecordSplit):
            ds = self._train.train(self.seed, epoch, batch_size, skip_batches, num_shards,
                                   shard_index, size)
        else:
            order = epoch_order(len(self._train), self.seed, epoch, num_shards, shard_index)
            ds = self._train.batches(order[skip_batches * batch_size:], batch_size, True, size)
        return _finish(ds, num_shards > 1)

    def val_dataset(self, batch_size: int) -> tf.data.Dataset:
        """The val split in a fixed order: (uint8 [b, S, S, 3], int32 [b]), last batch partial."""
        return self._in_order(self._val, batch_size)

    def eval_train_dataset(self, batch_size: int) -> tf.data.Dataset:
        """The train split like `val_dataset`: fixed order, last batch partial."""
        return self._in_order(self._train, batch_size)

    def _in_order(self, split, batch_size: int) -> tf.data.Dataset:
        batch_size = _positive("batch_size", batch_size)
        if isinstance(split, _RecordSplit):
            ds = split.ordered(batch_size, False, self.stored_size)
        else:
            ds = split.batches(np.arange(len(split)), batch_size, False, self.stored_size)
        return _finish(ds, False)

    def sample_images(self, max_images: int, batch_size: int = 64) -> tf.data.Dataset:
        """Up to max_images training images, the same ones on every call, for
        `augment.estimate_rgb_pca` and int8 calibration.

        Returns:
            A dataset of uint8 [b, S, S, 3] batches (no labels).
        """
        max_images = _positive("max_images", max_images)
        batch_size = _positive("batch_size", batch_size)
        if isinstance(self._train, _RecordSplit):
            # prepare writes files to shards in a random order, so the first records mix classes.
            ds = self._train.ordered(batch_size, False, self.stored_size, limit=max_images)
        else:
            order = _rng(self.seed, _SAMPLE).permutation(len(self._train))[:max_images]
            ds = self._train.batches(order, batch_size, False, self.stored_size)
        return _finish(ds.map(lambda images, labels: images), False)


def _files_in_order(files: sources.ImageFiles, variant: str, batch_size: int) -> tf.data.Dataset:
    size, _ = preprocess.geometry(variant)
    return _FileSplit(files).batches(np.arange(len(files)), _positive("batch_size", batch_size), False, size)


def image_folder_batches(folder: str, variant: str, *, max_images: int, batch_size: int = 32,
                         seed: int = 0) -> tf.data.Dataset:
    """Up to `max_images` images found anywhere under `folder` (a seeded sample), for int8
    calibration: uint8 [b, S, S, 3] batches at the variant's stored size, no labels.

    Raises:
        FileNotFoundError: `folder` does not exist.
        ValueError: it holds no readable image.
    """
    sources.require_folder(folder, "Calibration needs --data_dir: a folder of images", "image folder")
    paths = sources.list_image_files(folder)
    order = _rng(seed, _SAMPLE).permutation(len(paths))[:_positive("max_images", max_images)]
    picked = [paths[i] for i in sorted(order)]
    files, _ = sources.validate_image_files(picked, np.zeros(len(picked), np.int32), where=folder)
    if not len(files):
        raise ValueError(f"{folder} holds no readable image ({', '.join(sources.IMAGE_EXTENSIONS)}).")
    return _finish(_files_in_order(files, variant, batch_size).map(lambda images, labels: images), False)


def labelled_folder(data_dir: str, variant: str, class_names: list[str], *,
                    aliases: list[str] | None = None, split: str = "val", batch_size: int = 128,
                    strict: bool = False) -> tuple[tf.data.Dataset, list[tuple[str, str]]]:
    """A folder of class folders labelled with a model's classes, for evaluation.

    `data_dir` is either a tree with `split`/<class>/* or the class folders themselves
    (e.g. ImageNet's validation images sorted into WordNet-id folders). Folders are named
    by class names or `aliases` and may be any subset of the classes (see
    `sources.map_class_folders`).

    Returns:
        (dataset of (uint8 [b, S, S, 3], int32 [b]) in a fixed order, skipped [(path, reason)]).
    """
    sources.require_folder(data_dir, "This dataset needs --data_dir: a folder of class folders",
                           "data folder")
    split_dir = os.path.join(data_dir, split) if os.path.isdir(os.path.join(data_dir, split)) else data_dir
    paths, labels = sources.map_class_folders(split_dir, class_names, aliases)
    files, skipped = sources.validate_image_files(paths, labels, strict=strict, where=split_dir)
    if not len(files):
        raise ValueError(f"{split_dir} holds no readable image.")
    return _finish(_files_in_order(files, variant, batch_size), False), skipped


def load_data(dataset: str, data_dir: str | None, variant: str, *, seed: int = 0,
              cache: bool = False, strict: bool = False, num_classes: int = 10,
              synthetic_examples: int = 1024, shuffle_buffer: int = 16384) -> DataSource:
    """Opens a dataset for a model variant.

    Args:
        dataset: "cifar10" (python batches in data_dir, Keras' cache or downloaded),
            "folder" (data_dir/{train,val}/<class>/*), "tfrecord" (shards written by
            `main.py prepare`) or "synthetic" (learnable random images in memory).
        data_dir: where the dataset lives; unused by synthetic.
        variant: model variant; fixes the stored image size S (see `preprocess.geometry`).
        seed: seed of the example order (and of synthetic images).
        cache: decode folder / TFRecord images once into memory.
        strict: stop on any unreadable image file instead of skipping it.
        num_classes: classes of the synthetic dataset.
        synthetic_examples: training images of the synthetic dataset (val gets a tenth,
            at least one per class).
        shuffle_buffer: records in the shuffle buffer of TFRecord training data.

    Returns:
        A `DataSource`.

    Raises:
        ValueError: unknown dataset or variant, bad data (see the sources).
        FileNotFoundError: missing data_dir or data.
    """
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset; expected one of {DATASETS}. "
                         f"Received: dataset={dataset!r}")
    size, _ = preprocess.geometry(variant)
    skipped = []
    if dataset == "cifar10":
        (train_x, train_y), (val_x, val_y), class_names = cifar10.load_cifar10(data_dir)
        train, val = _ArraySplit(train_x, train_y), _ArraySplit(val_x, val_y)
    elif dataset == "folder":
        class_names, files, skipped = sources.load_folder_tree(data_dir, strict=strict)
        train, val = _FileSplit(files["train"]), _FileSplit(files["val"])
    elif dataset == "tfrecord":
        shuffle_buffer = _positive("shuffle_buffer", shuffle_buffer)
        metadata = tfrecord.read_metadata(data_dir)
        class_names, skipped = metadata["class_names"], metadata.get("skipped", [])
        train, val = (_RecordSplit(tfrecord.split_files(data_dir, metadata, split),
                                   metadata["splits"][split]["num_examples"], shuffle_buffer)
                      for split in sources.SPLITS)
    else:
        num_classes = _positive("num_classes", num_classes, 2)
        synthetic_examples = _positive("synthetic_examples", synthetic_examples)
        num_val = max(num_classes, synthetic_examples // 10)
        train = _ArraySplit(*sources.synthetic_arrays(num_classes, synthetic_examples, size,
                                                      seed, split="train"))
        val = _ArraySplit(*sources.synthetic_arrays(num_classes, num_val, size, seed,
                                                    split="val"))
        width = len(str(num_classes - 1))
        class_names = [f"class_{i:0{width}d}" for i in range(num_classes)]
    if cache:
        train, val = (s if isinstance(s, _ArraySplit) else _materialize(s, size, name)
                      for s, name in ((train, "train"), (val, "val")))
    source = DataSource(name=dataset, class_names=class_names, train=train, val=val,
                        stored_size=size, seed=seed, skipped=skipped)
    logging.info("Dataset %s: %d classes, %d train and %d val images at %dx%d%s.", dataset,
                 source.num_classes, source.num_train, source.num_val, size, size,
                 f", {len(source.skipped)} unreadable files skipped" if source.skipped else "")
    return source
