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
    """Writes the artifacts of `fmt` ("saved_model", "tflite" or "all") that are missing.

    Args:
        model_dir: the training run.
        export_dir: destination (default MODEL_DIR/export).
        fmt: which artifacts.
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
    from export import saved_model, tflite

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
        for form in tflite_forms(fmt, quantize):
            paths.append(_tflite(model_dir, export_dir, folder, info, name, form, weights,
                                 checkpoint=checkpoint, lrn=lrn, batch=batch, overwrite=overwrite,
                                 calibration=calibration if form == "int8" else None,
                                 calibration_steps=calibration_steps, report=report))
    return paths


def _tflite(model_dir, export_dir, folder, info, name, form, weights, *, checkpoint, lrn, batch,
            overwrite, calibration, calibration_steps, report) -> str:
    from export import tflite
    path = os.path.join(folder, tflite.artifact_name(name, info["variant"], quantize=form, lrn=lrn,
                                                     batch=batch))
    if os.path.isfile(path) and not overwrite and os.path.isfile(weights) and up_to_date(path, weights):
        report(f"TFLite: {path} (kept: already exported from these weights)")
        return path
    replaced = os.path.isfile(path)
    if replaced:  # older than the weights, or --overwrite: made again, then swapped in
        os.replace(path, aside := common.staging_name(folder, os.path.basename(path)))
    try:
        tflite.export_tflite(model_dir, export_dir, checkpoint=checkpoint, quantize=form, lrn=lrn,
                             batch=batch, calibration_data=calibration,
                             calibration_steps=calibration_steps, model_name=name)
    except BaseException:
        if replaced and not os.path.exists(path):
            os.replace(aside, path)  # the old file back: never fewer artifacts than before
        raise
    if replaced:
        common.remove_quietly(aside)
    report(f"TFLite: {path}" + (" (replaced)" if replaced else ""))
    return path
