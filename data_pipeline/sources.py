"""Data sources: the ImageNet-layout folder tree (scan, validate, decode), CIFAR-10 arrays and
learnable synthetic arrays. Each yields uint8 [S, S, 3] images and int32 labels.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf.config import SPLITS
from data_pipeline import preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_MAX_LISTED = 20  # bad files named in one log line or error message


@dataclasses.dataclass
class ImageFiles:
    """The usable image files of one split.

    Attributes:
        paths: file paths, sorted by class then name.
        labels: int32 [N] class indices.
        contents: [N] bytes; empty, or the image re-encoded as PNG for files that
            TensorFlow's decoders would read wrongly (palette BMPs).
    """
    paths: np.ndarray
    labels: np.ndarray
    contents: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def seed_entropy(seed: int) -> int:
    """Maps any int seed (negative too) to the non-negative entropy numpy's SeedSequence takes."""
    return int(seed) % (1 << 64)


def _list_classes(split_dir: str) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir)
                  if e.is_dir() and not e.name.startswith("."))


def _list_images(class_dir: str) -> tuple[list[str], int]:
    images, ignored = [], 0
    for entry in os.scandir(class_dir):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            images.append(entry.path)
        else:
            ignored += 1
    return sorted(images), ignored


def list_image_files(folder: str) -> list[str]:
    """Every image file under `folder` (any depth, hidden entries skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in files if not f.startswith(".")
                  and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def map_class_folders(split_dir: str, class_names: list[str],
                      aliases: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Lists split_dir/<class>/* and labels each folder with the index of a model's class.

    A folder may be named by a class name or by its alias (e.g. ImageNet's WordNet id,
    "n01440764" for "tench"); the folders may be any subset of the classes.

    Args:
        split_dir: a folder of class folders.
        class_names: the model's classes, index = label.
        aliases: other names of the same classes, in the same order.

    Returns:
        (paths, int32 labels) in folder-name order.

    Raises:
        ValueError: no class folders, a folder that names no class, or an empty folder.
    """
    index = {name: i for i, name in enumerate(class_names)}
    index.update({alias: i for i, alias in enumerate(aliases or [])})
    folders = _list_classes(split_dir)
    if not folders:
        raise ValueError(f"{split_dir} holds no class folders; expected {split_dir}/<class>/*.jpg.")
    unknown = [f for f in folders if f not in index]
    if unknown:
        kind = "a class name or WordNet id" if aliases else "a class name"
        raise ValueError(f"{len(unknown)} class folder(s) of {split_dir} name no class of the "
                         f"model, e.g. {unknown[0]!r}; each folder must be named by {kind} of "
                         f"the model (run.json: class_names, e.g. {class_names[0]!r}).")
    paths, labels = [], []
    for folder in folders:
        images, _ = _list_images(os.path.join(split_dir, folder))
        if not images:
            raise ValueError(f"The class folder {os.path.join(split_dir, folder)} holds no images.")
        paths += images
        labels += [index[folder]] * len(images)
    return paths, np.asarray(labels, np.int32)


def require_folder(data_dir: str | None, needs: str, name: str) -> str:
    """Returns `data_dir`, or raises a clear error when it is unset or not a folder.

    Args:
        needs: what the dataset expects in --data_dir (the message when it is unset).
        name: what the folder is called in the message when it is missing.
    """
    if not data_dir:
        raise ValueError(f"{needs}. Received: data_dir={data_dir!r}")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"The {name} does not exist or is not a folder. "
                                f"Received: data_dir={data_dir!r}")
    return data_dir


def scan_folder_tree(data_dir: str | None) -> tuple[
        list[str], dict[str, tuple[list[str], np.ndarray]]]:
    """Lists DATA_DIR/{train,val}/<class>/<image> and checks the layout.

    Class indices follow the sorted class folder names. Files without an image
    extension (.jpg, .jpeg, .png, .gif, .bmp, .webp) and hidden entries are ignored.

    Args:
        data_dir: the root of the tree.

    Returns:
        (class_names, {"train": (paths, labels), "val": (paths, labels)}).

    Raises:
        ValueError: no data_dir, no class folders, an empty class folder, or val classes
            that differ from train's.
        FileNotFoundError: data_dir or one of its split folders does not exist.
    """
    require_folder(data_dir, "This dataset needs --data_dir: a folder with train/<class>/* and "
                   "val/<class>/* images", "data folder")
    classes = {}
    for split in SPLITS:
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(
                f"Expected the layout DATA_DIR/train/<class>/*.jpg and DATA_DIR/val/<class>/*.jpg, "
                f"but {split_dir} is missing. Received: data_dir={data_dir!r}")
        classes[split] = _list_classes(split_dir)
        if not classes[split]:
            raise ValueError(f"{split_dir} holds no class folders; expected "
                             f"{split_dir}/<class>/*.jpg. Received: data_dir={data_dir!r}")
    if classes["val"] != classes["train"]:
        missing = sorted(set(classes["train"]) - set(classes["val"]))
        extra = sorted(set(classes["val"]) - set(classes["train"]))
        raise ValueError(f"The val classes differ from the train classes: missing in val: "
                         f"{missing[:_MAX_LISTED]}, only in val: {extra[:_MAX_LISTED]}. "
                         f"Both splits need the same class folders. "
                         f"Received: data_dir={data_dir!r}")
    class_names = classes["train"]
    splits = {}
    for split in SPLITS:
        paths, labels, ignored = [], [], 0
        for label, name in enumerate(class_names):
            class_dir = os.path.join(data_dir, split, name)
            images, n_ignored = _list_images(class_dir)
            if not images:
                raise ValueError(f"The class folder {class_dir} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}). Add images or remove the "
                                 f"folder from both splits.")
            paths += images
            labels += [label] * len(images)
            ignored += n_ignored
        if ignored:
            logging.info("Ignored %d files without an image extension in %s/%s.",
                         ignored, data_dir, split)
        splits[split] = (paths, np.asarray(labels, np.int32))
    return class_names, splits


def _tf_error_text(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    text = text.split("}}")[-1].split(" [Op:")[0].strip()
    return text.splitlines()[0] if text else type(error).__name__


def _why_unreadable(path: str) -> str:
    """A short reason why TensorFlow could not decode the file (only called on failures)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    fmt = "image"
    try:
        with Image.open(path) as image:
            fmt = image.format or fmt
            image.load()
    except UnidentifiedImageError:
        return "not an image"
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reason to skip
        return f"truncated or corrupt {fmt}: {e}"
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except Exception as e:  # noqa: BLE001
        return f"TensorFlow cannot decode this {fmt}: {_tf_error_text(e)}"
    return "could not be decoded"


def _low_depth_bmp(contents: tf.Tensor) -> tf.Tensor:
    # BMPs of <= 8 bits per pixel use a palette, which tf.io.decode_bmp ignores.
    def check():
        header = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, 0, 30), tf.uint8), tf.int32)
        is_bmp = tf.logical_and(tf.equal(header[0], ord("B")), tf.equal(header[1], ord("M")))
        # Bits per pixel: offset 28 in Windows headers, 24 in the 12-byte OS/2 header.
        at = tf.where(tf.equal(header[14], 12), 24, 28)
        bpp = header[at] + 256 * header[at + 1]
        return tf.logical_and(is_bmp, bpp <= 8)

    return tf.cond(tf.strings.length(contents) >= 30, check, lambda: tf.constant(False))


def _check_decodes(index: tf.Tensor, path: tf.Tensor):
    contents = tf.io.read_file(path)
    palette_bmp = _low_depth_bmp(contents)

    def decode():
        is_jpeg = tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff")
        # JPEG at 1/8 scale: libjpeg still reads every scan, so truncation is caught at a
        # fraction of the cost of a full decode.
        shape = tf.cond(is_jpeg,
                        lambda: tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8)),
                        lambda: tf.shape(tf.io.decode_image(contents, channels=3,
                                                            expand_animations=False)))
        return shape[0] > 0

    ok = tf.cond(palette_bmp, lambda: tf.constant(True), decode)
    return index, palette_bmp, ok


def _to_png(path: str) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def validate_image_files(paths: list[str], labels: np.ndarray, *, strict: bool = False,
                         where: str = "", log: bool = True) -> tuple[ImageFiles, list[tuple[str, str]]]:
    """Decodes every file once with the decoder training uses, and drops those that fail.

    Decoding with TensorFlow (not PIL) means that a file that passes here cannot fail in
    training. It runs in parallel in tf.data with `ignore_errors`; JPEGs are decoded at 1/8
    scale, which still reads all of the entropy-coded data. A reason is looked up only for
    the files that failed. Palette BMPs, which TensorFlow reads as grey indices, are
    re-encoded as PNG in memory.

    Args:
        paths: image files.
        labels: int32 [N] labels of `paths`.
        strict: raise instead of skipping unreadable files.
        where: the folder, for messages.
        log: name the skipped files in a warning line (False: the caller reports them).

    Returns:
        (usable files, [(path, reason)] of the skipped ones).

    Raises:
        ValueError: with strict=True, when any file is unreadable, naming the files.
    """
    n = len(paths)
    skipped: dict[int, str] = {}
    candidates = []
    for i, path in enumerate(paths):
        try:
            size = os.path.getsize(path)
        except OSError as e:
            skipped[i] = f"unreadable: {e.strerror}"
            continue
        if size == 0:
            skipped[i] = "empty file"
        else:
            candidates.append(i)
    ok, palette = np.zeros(n, bool), np.zeros(n, bool)
    if candidates:
        paths_t = tf.constant([paths[i] for i in candidates])
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(candidates, tf.int64), paths_t))
        ds = ds.map(_check_decodes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        ds = ds.ignore_errors().batch(1024)
        for index, is_palette, good in ds.as_numpy_iterator():
            ok[index[good]] = True
            palette[index[is_palette]] = True
    contents = np.full(n, b"", dtype=object)
    for i in np.flatnonzero(palette):
        try:
            contents[i] = _to_png(paths[i])
        except Exception as e:  # noqa: BLE001
            ok[i] = False
            skipped[i] = f"corrupt BMP: {e}"
    for i in candidates:
        if not ok[i] and i not in skipped:
            skipped[i] = _why_unreadable(paths[i])
    bad = sorted(skipped)
    listed = [(paths[i], skipped[i]) for i in bad]
    if listed:
        shown = "; ".join(f"{p} ({r})" for p, r in listed[:_MAX_LISTED])
        more = f"; and {len(listed) - _MAX_LISTED} more" if len(listed) > _MAX_LISTED else ""
        if strict:
            raise ValueError(f"{len(listed)} unreadable image file(s) in {where or 'the data'}: "
                             f"{shown}{more}. Remove or replace them, or run without --strict "
                             f"to skip them.")
        if log:
            logging.warning("Skipping %d unreadable image file(s) of %d in %s: %s%s",
                            len(listed), n, where or "the data", shown, more)
    keep = np.ones(n, bool)
    keep[bad] = False
    files = ImageFiles(paths=np.asarray(paths, dtype=object)[keep],
                       labels=np.asarray(labels, np.int32)[keep], contents=contents[keep])
    return files, listed


def is_palette_bmp(header: bytes) -> bool:
    """Whether encoded bytes are a BMP of <= 8 bits per pixel (palette), which
    tf.io.decode_bmp would read as grey indices."""
    if len(header) < 30 or header[:2] != b"BM":
        return False
    at = 24 if header[14] == 12 else 28
    return header[at] + 256 * header[at + 1] <= 8


def check_class_counts(labels: np.ndarray, class_names: list[str], split_dir: str) -> None:
    """Raises ValueError when a class keeps no image after bad files were skipped."""
    counts = np.bincount(labels, minlength=len(class_names))
    if not counts.all():
        empty = os.path.join(split_dir, class_names[int(np.argmin(counts))])
        raise ValueError(f"The class folder {empty} holds no readable image; every file in it "
                         f"was skipped (see the log). Replace the files or remove the class "
                         f"from both splits.")


def load_folder_tree(data_dir: str | None, *, strict: bool = False) -> tuple[
        list[str], dict[str, ImageFiles], list[tuple[str, str]]]:
    """Scans and validates an ImageNet-layout folder tree.

    Args:
        data_dir: root with train/<class>/* and val/<class>/*.
        strict: raise when any file is unreadable instead of skipping it.

    Returns:
        (class_names, {"train": ImageFiles, "val": ImageFiles}, skipped [(path, reason)]).

    Raises:
        ValueError, FileNotFoundError: see `scan_folder_tree`; also when a class keeps
            no readable image, or (strict) any file is unreadable.
    """
    class_names, listing = scan_folder_tree(data_dir)
    splits, skipped = {}, []
    for split, (paths, labels) in listing.items():
        split_dir = os.path.join(data_dir, split)
        files, bad = validate_image_files(paths, labels, strict=strict, where=split_dir)
        check_class_counts(files.labels, class_names, split_dir)
        splits[split] = files
        skipped += bad
    return class_names, splits, skipped


def decode_image(contents: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 [size, size, 3], shorter side to `size`,
    central square (§2). Grey, RGBA, CMYK and palette images become RGB; a GIF gives its
    first frame."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    return preprocess.resize_and_center(image, size)


def read_and_decode(path: tf.Tensor, contents: tf.Tensor, size: int) -> tf.Tensor:
    """Decodes `contents` when non-empty, else the file at `path` (see `decode_image`)."""
    data = tf.cond(tf.strings.length(contents) > 0, lambda: contents,
                   lambda: tf.io.read_file(path))
    return decode_image(data, size)


def synthetic_arrays(num_classes: int, num_examples: int, size: int, seed: int, *,
                     split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Random images that a network can learn: per class a mean colour and a stripe pattern,
    per image Gaussian noise.

    Args:
        num_classes: class count (>= 2).
        num_examples: images to make.
        size: image side.
        seed: seed of the class templates (shared by the splits) and the noise.
        split: "train" or "val": the splits get different noise.

    Returns:
        (uint8 [num_examples, size, size, 3], int32 [num_examples]); labels cycle through
        the classes.
    """
    templates_rng = np.random.default_rng([seed_entropy(seed), 7])
    colours = templates_rng.uniform(48, 208, (num_classes, 1, 1, 3)).astype(np.float32)
    angle = templates_rng.uniform(0, np.pi, num_classes)
    freq = templates_rng.uniform(1.0, 4.0, num_classes)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
    stripes = (24 * np.sin(2 * np.pi * freq[:, None, None] * phase))[..., None].astype(np.float32)
    templates = colours + stripes  # [C, size, size, 3]
    labels = (np.arange(num_examples) % num_classes).astype(np.int32)
    images = np.empty((num_examples, size, size, 3), np.uint8)
    noise_rng = np.random.default_rng([seed_entropy(seed), 8, SPLITS.index(split)])
    chunk = max(1, (1 << 22) // (size * size * 3))
    for start in range(0, num_examples, chunk):
        end = min(start + chunk, num_examples)
        noise = noise_rng.standard_normal((end - start, size, size, 3), dtype=np.float32)
        images[start:end] = np.clip(templates[labels[start:end]] + 32 * noise, 0, 255)
    return images, labels
