"""What every export format shares: where artifacts go, the model name, the class names.

Also atomic, no-overwrite publishing of files and folders, so that a killed
or failed export never leaves an artifact that looks complete.
"""

from __future__ import annotations

import os
import re
import tempfile

from alexnet_tf import rundir, storage
from alexnet_tf.model import VARIANTS

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What a failed write of an artifact tells the user to do.
RERUN_HINT = "free space and run the same command to finish the export"


def resolve_export_dir(model_dir: str, export_dir: str | None) -> str:
    """Returns the export destination: `export_dir`, or MODEL_DIR/export by default.

    Args:
        model_dir: the training run's folder.
        export_dir: explicit destination, or None.

    Returns:
        An absolute path; the folder is created if missing.

    Raises:
        NotADirectoryError: when the destination exists and is not a folder.
        ValueError: when the destination is this source package.
    """
    path = os.path.abspath(export_dir if export_dir else os.path.join(model_dir, rundir.EXPORT_DIR))
    if os.path.realpath(path) == os.path.realpath(_PACKAGE_DIR):
        raise ValueError(f"Refusing to export into the source package {path!r}; "
                         "pass --export_dir or use a run folder as --model_dir.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"Export destination {path!r} exists and is not a folder.")
    os.makedirs(path, exist_ok=True)
    return path


def model_name_for(info: dict, model_name: str | None) -> str:
    """The served model's name: `model_name`, or `alexnet_<variant>` by default.

    Raises:
        ValueError: when the name is not a plain folder name.
    """
    name = model_name if model_name is not None else f"alexnet_{info['variant']}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError("`model_name` must be a folder name of letters, digits, '_', '.', '-' "
                         f"(not starting with '.', '_' or '-'). Received: model_name={name!r}")
    return name


def class_names_of(info: dict) -> list[str]:
    """The run's class names (`run.json`), or "0".."C-1" when it names none.

    Raises:
        ValueError: when their count differs from the run's class count.
    """
    num_classes = int(info["num_classes"])
    names = info.get("class_names")
    if not names:
        return [str(i) for i in range(num_classes)]
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise ValueError(f"run.json has {len(names)} class names for {num_classes} classes.")
    if any("\n" in n or not n.strip() for n in names):
        raise ValueError("Class names must be non-empty single-line strings. "
                         f"Received: class_names={names!r}")
    return names


def variant_for_crop(crop: int) -> str:
    """The variant whose model input is `crop` x `crop` (for artifacts that store no variant).

    Raises:
        ValueError: when no variant, or more than one, has that input size.
    """
    matches = [name for name, spec in VARIANTS.items() if spec.input_size == crop]
    if len(matches) != 1:
        raise ValueError(f"Cannot tell the model variant from its {crop}x{crop} input "
                         f"(candidates: {matches or 'none'}).")
    return matches[0]


def read_labels(path: str) -> list[str]:
    """Reads a labels file: one class name per line, in class-index order."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def labels_text(class_names: list[str]) -> str:
    """A labels file's contents for `class_names`."""
    return "".join(f"{name}\n" for name in class_names)


def publish_file(data: bytes, path: str) -> None:
    """Writes `data` to `path` atomically, refusing to replace an existing file.

    The bytes go to a temporary file in the same folder, which is then
    hard-linked to `path` (fails if `path` exists) and removed.

    Raises:
        FileExistsError: when `path` already exists.
    """
    if os.path.lexists(path):
        raise FileExistsError(f"{path!r} already exists; delete it or choose another --export_dir.")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=staging_prefix(), suffix="-" + os.path.basename(path))
    try:
        with storage.writing(path, RERUN_HINT), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path!r} already exists; delete it or choose another "
                                  "--export_dir.") from None
    finally:
        os.remove(tmp)


def publish_dir(tmp_dir: str, final_dir: str) -> None:
    """Renames a fully written `tmp_dir` to `final_dir`, refusing to replace anything.

    Raises:
        FileExistsError: when `final_dir` already exists.
    """
    if os.path.lexists(final_dir):
        raise FileExistsError(f"{final_dir!r} already exists; choose another version "
                              "or delete it first.")
    try:
        os.rename(tmp_dir, final_dir)
    except OSError as e:  # a concurrent export took the name (ENOTEMPTY / EEXIST)
        raise FileExistsError(f"{final_dir!r} appeared during the export: {e.strerror}.") from None


def staging_prefix() -> str:
    """Staging names carry the writer's process id, so a later export can tell a killed
    export's leftovers from a running one's (`artifacts.remove_stale_staging`)."""
    return f".tmp-{os.getpid()}-"


def staging_dir(parent: str, label: str) -> str:
    """A fresh temporary folder in `parent` whose name no reader mistakes for an artifact."""
    return tempfile.mkdtemp(dir=parent, prefix=f"{staging_prefix()}{label}-")


def staging_name(parent: str, name: str) -> str:
    """A path in `parent` for setting `name` aside while it is made again."""
    return os.path.join(parent, f"{staging_prefix()}{name}")


remove_quietly = storage.remove_quietly
