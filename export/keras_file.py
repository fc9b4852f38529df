"""A run's model as one Keras `.keras` file: EXPORT_DIR/<name>.keras, labels in <name>.labels.txt.

The file holds the model as the run builds it: float pixels in [0, 255] of the variant's crop
(see `alexnet_tf.preprocess_input`) -> fc8 logits. `keras.saving.load_model` reads it in any
process that has imported `alexnet_tf` (which registers the LRN layer).
"""

from __future__ import annotations

import os
import tempfile

from alexnet_tf import rundir, storage
from export import common


def artifact_path(folder: str, model_name: str) -> str:
    """EXPORT_DIR/<model_name>.keras."""
    return os.path.join(folder, f"{model_name}.keras")


def labels_path_for(keras_path: str) -> str:
    """The labels file beside a .keras artifact."""
    return os.path.splitext(keras_path)[0] + ".labels.txt"


def export_keras(model_dir: str, export_dir: str | None = None, *, checkpoint: str = "best",
                 model_name: str | None = None) -> str:
    """Writes a training run's model and weights as a `.keras` file, never replacing one.

    The model is saved to a temporary file in the destination folder, which is then
    hard-linked to its name (an existing file there is an error) and removed, so a killed
    export leaves no partial `.keras` file under the artifact's name.

    Args:
        model_dir: the training run's folder (run.json and weights).
        export_dir: destination folder; defaults to MODEL_DIR/export.
        checkpoint: "best" or "latest" weights.
        model_name: the file's name without `.keras`; defaults to `alexnet_<variant>`.

    Returns:
        The .keras path.

    Raises:
        FileNotFoundError: when the run or its weights are missing.
        FileExistsError: when the file already exists.
        NotADirectoryError: when the destination is a file.
        ValueError: on a bad checkpoint or model name.
    """
    info = rundir.read_run_info(model_dir)
    name = common.model_name_for(info, model_name)
    class_names = common.class_names_of(info)
    folder = common.resolve_export_dir(model_dir, export_dir)
    path = artifact_path(folder, name)
    exists = f"{path!r} already exists; delete it or choose another --export_dir."
    if os.path.lexists(path):
        raise FileExistsError(exists)
    model, _ = rundir.load_trained_model(model_dir, checkpoint)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=common.staging_prefix(), suffix=f"-{name}.keras")
    os.close(fd)
    try:
        with storage.writing(path, common.RERUN_HINT):
            model.save(tmp)
        rundir.atomic_write_text(labels_path_for(path), common.labels_text(class_names))
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(exists) from None
    finally:
        os.remove(tmp)
    return path
