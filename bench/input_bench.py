"""Input-pipeline throughput: folder validation, host decode (JPEG and cache), and
`augment_batch` on batches of 128 for the cifar and paper geometries.

    python bench/input_bench.py --data_dir=/path/to/tree [--repeats=5] [--threads=1]

Each figure is the median of --repeats timed runs after one warm-up run.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from data_pipeline import augment, pipeline

BATCH = 128


def _median_rate(fn, images: int, repeats: int) -> tuple[float, float]:
    """(median images/s, median seconds) of `fn` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return images / seconds, seconds


def _host(source: pipeline.DataSource, batches: int, threads: int | None):
    options = tf.data.Options()
    if threads:
        options.threading.private_threadpool_size = threads
    epoch = iter(range(1, 1 << 30))

    def run():
        ds = source.train_dataset(BATCH, epoch=next(epoch)).take(batches).with_options(options)
        for _ in ds:
            pass
    return run


def _augment(images: np.ndarray, config: augment.AugmentConfig, steps: int, jit: bool):
    x = tf.constant(images)
    step_fn = tf.function(lambda s: augment.augment_batch(x, s, config), jit_compile=jit)
    counter = iter(range(1 << 30))

    def run():
        for _ in range(steps):
            out = step_fn(tf.constant([0, next(counter)], tf.int64))
        out.numpy()
    return run


def run_benchmarks(data_dir: str, *, repeats: int = 5, batches: int = 60,
                   threads: int = 1) -> list[dict]:
    """Runs every measurement and returns records {name, images_per_s, seconds}."""
    records = []

    def record(name, rate, seconds):
        records.append({"name": name, "images_per_s": rate, "seconds": seconds})
        print(f"{name:<58s} {rate:>10.0f} images/s  ({seconds:.3f} s)", flush=True)

    start = time.perf_counter()
    source = pipeline.load_data("folder", data_dir, "cifar", seed=0)
    seconds = time.perf_counter() - start
    total = source.num_train + source.num_val + len(source.skipped)
    record(f"list + validate {total} files (all cores, once)", total / seconds, seconds)

    images = batches * BATCH
    record(f"host, JPEG decode -> 32x32, {threads} tf.data thread(s)",
           *_median_rate(_host(source, batches, threads), images, repeats))
    record("host, JPEG decode -> 32x32, all cores (AUTOTUNE)",
           *_median_rate(_host(source, batches, None), images, repeats))
    paper = pipeline.load_data("folder", data_dir, "paper", seed=0)
    record(f"host, JPEG decode -> 256x256 (paper), {threads} tf.data thread(s)",
           *_median_rate(_host(paper, max(1, batches // 4), threads), max(1, batches // 4) * BATCH,
                         repeats))

    start = time.perf_counter()
    cached = pipeline.load_data("folder", data_dir, "cifar", seed=0, cache=True)
    seconds = time.perf_counter() - start
    record(f"cache: list + validate + decode {cached.num_train + cached.num_val} (once)",
           (cached.num_train + cached.num_val) / seconds, seconds)
    record(f"host, from cache, {threads} tf.data thread(s)",
           *_median_rate(_host(cached, batches, threads), images, repeats))

    eigvals, eigvecs = augment.estimate_rgb_pca(cached.sample_images(2000), max_images=2000)
    rng = np.random.default_rng(0)
    for variant, size, steps in (("cifar", 32, 20), ("paper", 256, 2)):
        config = augment.AugmentConfig.for_variant(variant, pca_std=0.1, pca_eigvals=eigvals,
                                                   pca_eigvecs=eigvecs)
        batch = rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
        for jit in (False, True):
            record(f"augment_batch {variant} {size}->{config.crop_size}, "
                   f"{'XLA' if jit else 'tf.function'} (CPU)",
                   *_median_rate(_augment(batch, config, steps, jit), steps * BATCH, repeats))
    return records


FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    print(f"{os.cpu_count()} CPU cores visible; batches of {BATCH}; median of "
          f"{FLAGS.repeats} runs after a warm-up.")
    run_benchmarks(FLAGS.data_dir, repeats=FLAGS.repeats, batches=FLAGS.batches,
                   threads=FLAGS.threads)


if __name__ == "__main__":
    flags.DEFINE_string("data_dir", None, "A folder tree DATA_DIR/{train,val}/<class>/*.",
                        required=True)
    flags.DEFINE_integer("repeats", 5, "Timed runs per figure.", lower_bound=1)
    flags.DEFINE_integer("batches", 60, "Batches per host-pipeline run.", lower_bound=1)
    flags.DEFINE_integer("threads", 1, "tf.data private thread pool size where said.",
                         lower_bound=1)
    app.run(main)
