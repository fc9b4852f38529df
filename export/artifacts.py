"""The `export` command: the artifacts a run asks for, finishing on a rerun what an interrupted
export left undone.

An artifact appears under its final name only when complete (a renamed staging folder, a
hard-linked temporary file), so one found there is whole. It is kept when it is at least as
new as the weights it would be made from, and made again otherwise (or with `overwrite`).
A SavedModel is never replaced: a new export is a new version.
"""

from __future__ import annotations

import os
import re

from alexnet_tf import rundir
from alexnet_tf.config import QUANTIZATIONS
from export import common

_STAGING = re.compile(r"^\.tmp-(\d+)-")


def remove_stale_staging(folder: str) -> list[str]:
    """Removes the staging files and folders of exports whose process is gone (killed).

    Returns:
        The removed names.
    """
    removed = []
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            match = _STAGING.match(name)
            if match and not _alive(int(match.group(1))):
                common.remove_quietly(os.path.join(parent, name))
                removed.append(os.path.relpath(os.path.join(parent, name), folder))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up_to_date(artifact: str, weights: str) -> bool:
    """Whether `artifact` (a file, or a SavedModel folder) was written after `weights` was."""
    probe = os.path.join(artifact, "saved_model.pb") if os.path.isdir(artifact) else artifact
    return os.path.isfile(probe) and os.path.getmtime(probe) >= os.path.getmtime(weights)


def tflite_forms(fmt: str, quantize: str | None) -> tuple[str, ...]:
    """The TFLite quantizations to write: `quantize`, or with `fmt="all"` and none given, all."""
    if fmt == "all" and quantize is None:
        return QUANTIZATIONS
    return (quantize or "none",)


def export_run(model_dir: str, export_dir: str | None = None, *, fmt: str = "saved_model",
               checkpoint: str = "best", version: int | None = None, model_name: str | None = None,
               quantize: str | None = None, lrn: str = "builtin", batch: int = 1,
               calibration=None, calibration_steps: int = 100, overwrite: bool = False,
               report=print) -> list[str]:
    """Writes the artifacts of `fmt` that are missing.

    Args:
        model_dir: the training run.
        export_dir: destination (default MODEL_DIR/export).
        fmt: which artifacts: "saved_model", "tflite", "keras" or "all".
        checkpoint, version, model_name, lrn, batch, calibration_steps: as for
            `export_saved_model` and `export_tflite`.
        quantize: the TFLite form; None: float32, or every form with `fmt="all"`.
        calibration: int8 calibration batches (see `tflite.calibration_batches`).
        overwrite: write again what exists (TFLite files are replaced; the SavedModel
            gets a new version).
        report: called with one line per artifact.

    Returns:
        The paths of the artifacts, written or kept.
    """
    from export import saved_model

    weights = os.path.join(model_dir, rundir.WEIGHTS[checkpoint])
    info = rundir.read_run_info(model_dir)
    name = common.model_name_for(info, model_name)
    folder = common.resolve_export_dir(model_dir, export_dir)
    remove_stale_staging(folder)
    paths = []
    if fmt in ("saved_model", "all"):
        base = os.path.join(folder, name)
        newest = (saved_model.existing_versions(base) or [None])[-1]
        if (version is None and newest is not None and not overwrite and os.path.isfile(weights)
                and up_to_date(os.path.join(base, str(newest)), weights)):
            path = os.path.join(base, str(newest))
            report(f"SavedModel: {path} (kept: already exported from these weights)")
        else:
            path = saved_model.export_saved_model(model_dir, export_dir, checkpoint=checkpoint,
                                                  version=version, model_name=model_name)
            report(f"SavedModel: {path}")
        paths.append(path)
    if fmt in ("tflite", "all"):
        from export import tflite
        for form in tflite_forms(fmt, quantize):
            path = os.path.join(folder, tflite.artifact_name(name, info["variant"], quantize=form,
                                                             lrn=lrn, batch=batch))
            paths.append(_file_artifact("TFLite", path, weights, overwrite, report, lambda form=form: (
                tflite.export_tflite(model_dir, export_dir, checkpoint=checkpoint, quantize=form,
                                     lrn=lrn, batch=batch, model_name=name,
                                     calibration_data=calibration if form == "int8" else None,
                                     calibration_steps=calibration_steps))))
    if fmt in ("keras", "all"):
        from export import keras_file
        path = keras_file.artifact_path(folder, name)
        paths.append(_file_artifact("Keras", path, weights, overwrite, report, lambda: (
            keras_file.export_keras(model_dir, export_dir, checkpoint=checkpoint, model_name=name))))
    return paths


def _file_artifact(kind: str, path: str, weights: str, overwrite: bool, report, write) -> str:
    """Keeps the file artifact `path` when it is up to date, else makes it with `write()`;
    one it replaces is set aside meanwhile and put back if the new one fails."""
    if os.path.isfile(path) and not overwrite and os.path.isfile(weights) and up_to_date(path, weights):
        report(f"{kind}: {path} (kept: already exported from these weights)")
        return path
    replaced = os.path.isfile(path)
    aside = common.staging_name(os.path.dirname(path), os.path.basename(path))
    if replaced:  # older than the weights, or --overwrite
        os.replace(path, aside)
    try:
        write()
    except BaseException:
        if replaced and not os.path.exists(path):
            os.replace(aside, path)  # the old file back: never fewer artifacts than before
        raise
    if replaced:
        common.remove_quietly(aside)
    report(f"{kind}: {path}" + (" (replaced)" if replaced else ""))
    return path
