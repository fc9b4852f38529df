"""`python main.py benchmark`: training, input and inference speed, measured side by side in one run.

Prints a table per part and returns records (a list of dicts with at least `what`,
`variant` and `images_per_second` or `latency_ms`) for `--output`.
"""

from __future__ import annotations

import os
import platform

import tensorflow as tf
import keras

from alexnet_tf import cpu_info
from alexnet_tf.config import BENCHMARKS, VARIANT_NAMES
from alexnet_tf.distribute import resolve_precision
from bench import common

VARIANTS = tuple(sorted(VARIANT_NAMES))  # the smallest first
WHATS = BENCHMARKS


def environment(threads: dict) -> dict:
    return {"what": "environment", "variant": None, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), **threads, "gpus": len(tf.config.list_physical_devices("GPU")),
            "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")}


def run(what: str = "all", variants=VARIANTS, *, data_dir: str | None = None, reps: int = 5,
        batch: int = 128, intra_threads: int = 0, precision: str = "auto",
        output: str | None = None) -> list:
    """Runs the benchmarks.

    Args:
        what: "train", "input", "inference", "all" (the first three) or "profile" (op-level
            times of the bare and the real train step, `bench.profile`).
        variants: model variants to measure.
        data_dir: a folder tree (DATA_DIR/{train,val}/<class>/*.jpg) for the data-fed
            train step and the input pipeline; those parts are skipped without it.
        reps: timed repetitions per figure (median reported).
        batch: training / throughput batch size.
        intra_threads: TF intra-op threads (0: TF's default, all cores).
        precision: the train step's dtype policy; "auto" times float32 and, where it
            differs, what `--precision=auto` picks on this machine.
        output: JSON file for the records.

    Returns:
        The records.
    """
    if what not in WHATS:
        raise ValueError(f"`what` must be one of {WHATS}. Received: what={what!r}")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"Unknown variants {unknown}; expected some of {VARIANTS}.")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir={data_dir!r} is not a folder.")
    threads = common.set_threads(intra_threads)
    cpu = cpu_info.detect()
    records = [environment(threads)]
    print(f"CPU: {cpu.describe()}; oneDNN {cpu_info.onednn_description()}")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, intra-op threads {threads['intra_op']}; "
          f"medians of {reps} interleaved repetitions, warm-up excluded.")
    peak = common.matmul_peak_gflops()
    records.append({"what": "matmul_peak", "variant": None, "gflops": peak})
    print(f"float32 matmul peak (4096^2): {peak:.1f} GFLOP/s\n")

    if what in ("train", "all"):
        from bench import train
        sources = {}
        if data_dir:
            from data_pipeline.pipeline import load_data
            sources = {v: load_data("folder", data_dir, v, seed=0, cache=(v == "cifar")) for v in variants}
        # "auto": float32 and, when it is not float32, what `--precision=auto` picks here.
        chosen, _ = resolve_precision(precision)
        precisions = ("float32",) if chosen == "float32" else \
            ("float32", chosen) if precision == "auto" else (chosen,)
        part = []
        for variant in variants:
            part += train.measure(variant, batch=batch, reps=reps, source=sources.get(variant),
                                  peak_gflops=peak, precisions=precisions)
        print("Training step (images/s; vs_bare: the train command's step over the bare model)")
        print(common.table([r for r in part if r["what"] == "train"],
                           ["variant", "step", "precision", "lrn", "filter_grad", "data", "images_per_second",
                            "vs_bare", "gflops", "share_of_peak"]))
        for r in part:
            if r["what"] == "lrn_share":
                print(f"{r['variant']}, {r['precision']}: the LRN layers take "
                      f"{100 * r['share_of_train_step']:.1f}% of the train step "
                      "(1 - train_step / train_step_no_lrn)")
            if r["what"] == "filter_grad_speedup":
                print(f"{r['variant']}, {r['precision']}: kernel gradients as matmuls make the train "
                      f"step {r['speedup']:.2f}x faster (train_step_tf_filter_grad / train_step)")
        print()
        records += part

    if what in ("input", "all"):
        if not data_dir:
            print("Input pipeline: skipped (needs --data_dir=a folder tree of JPEGs).\n")
        else:
            from bench import input_bench
            print("Input pipeline")
            part = input_bench.run_benchmarks(data_dir, repeats=reps)
            # Against the fastest train step measured (the most the input has to keep up with).
            consumed = {}
            for r in records:
                if r["what"] == "train" and r["step"] != "bare" and "no_lrn" not in r["step"]:
                    consumed[r["variant"]] = max(consumed.get(r["variant"], 0.0), r["images_per_second"])
            for r in part:
                variant = "paper" if "paper" in r["name"] else "cifar"
                r.update(what="input", variant=variant, images_per_second=r.pop("images_per_s"))
                if variant in consumed:
                    r["x_train_consumption"] = r["images_per_second"] / consumed[variant]
            print(common.table(part, ["variant", "name", "images_per_second", "x_train_consumption"]) + "\n")
            records += part

    if what == "profile":
        from bench import train
        chosen, _ = resolve_precision(precision)
        for variant in variants:
            part = train.profile(variant, batch=batch, precision=chosen, steps=reps)
            for step in ("bare", "train_step"):
                for by in ("type", "layer"):
                    rows = [r for r in part if r["step"] == step and r["by"] == by]
                    print(f"{variant}, {step} ({rows[0]['precision']}): op time per step by {by}")
                    print(common.table(rows, ["group", "ms_per_step", "share"]) + "\n")
            records += part

    if what in ("inference", "all"):
        from bench import inference_bench
        part = []
        for variant in variants:
            part += inference_bench.measure(variant, reps=reps)
        print("Inference")
        print(common.table(part, ["variant", "form", "batch", "latency_ms", "images_per_second"]) + "\n")
        records += part

    for r in records:  # every record names the CPU it was measured on
        r.update(cpu.record(), onednn=cpu_info.onednn_enabled())
    common.emit(records, output)
    return records
