"""LRN forward+backward cost per implementation at the paper's shapes, side by side.

    python bench/lrn_bench.py [--batch=128] [--reps=5]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_tf import cpu_info  # noqa: E402

cpu_info.apply_onednn("auto")  # as the commands do, before TensorFlow loads

import tensorflow as tf  # noqa: E402

from alexnet_tf.config import LRN_IMPLEMENTATIONS as IMPLEMENTATIONS  # noqa: E402
from alexnet_tf.layers import LocalResponseNormalization  # noqa: E402

SHAPES = {"paper lrn1": (55, 55, 96), "paper lrn2": (27, 27, 256), "cifar lrn1": (32, 32, 64),
          "cifar lrn2": (15, 15, 192)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"CPU: {cpu_info.detect().describe()}; oneDNN {cpu_info.onednn_description()}")
    print(f"intra-op threads: {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} "
          f"of {os.cpu_count()} cores; batch {args.batch}; median of {args.reps}")
    for label, (h, w, c) in SHAPES.items():
        x = tf.random.uniform((args.batch, h, w, c), 0, 300)
        fns = {}
        for impl in IMPLEMENTATIONS:
            layer = LocalResponseNormalization(implementation=impl)

            @tf.function
            def fwd_bwd(x, layer=layer):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x, training=True)
                return tape.gradient(y, x)
            fwd_bwd(x)
            fns[impl] = fwd_bwd
        times = {impl: [] for impl in fns}
        for _ in range(args.reps):  # interleaved
            for impl, fn in fns.items():
                t0 = time.perf_counter()
                fn(x).numpy()
                times[impl].append(time.perf_counter() - t0)
        med = {impl: statistics.median(t) * 1e3 for impl, t in times.items()}
        base = med["builtin"]
        print(f"{label:12s} " + "  ".join(f"{impl} {ms:7.1f} ms ({base / ms:4.2f}x)" for impl, ms in med.items()))


if __name__ == "__main__":
    main()
