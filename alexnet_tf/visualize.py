"""Pictures of a trained run: conv1's kernels (the paper's Figure 3) and nearest neighbours
by fc7 distance (Figure 4), written as PNG files.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import keras
import numpy as np

from alexnet_tf import features as features_lib

SEPARATOR = 255        # the colour of the lines between tiles (white)
TOWER_GAP = 4          # pixels between the two towers' blocks of kernels
FILTER_TILE = 32       # a kernel is enlarged to about this many pixels a side
MAX_COLUMNS = 16
NEIGHBOR_TILE = 96     # side of each image in the neighbours picture
QUERY_GAP = 8          # pixels between the query column and its neighbours


def conv1_kernel(model: keras.Model) -> np.ndarray:
    """conv1's kernel, float32 [kh, kw, 3, filters].

    Raises:
        ValueError: the model has no conv1 over 3 input channels.
    """
    try:
        kernel = model.get_layer("conv1").kernel
    except (ValueError, AttributeError):
        raise ValueError(f"The model {model.name!r} has no convolution named 'conv1'.") from None
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel), np.float32)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise ValueError(f"conv1 must see RGB images (kernel [kh, kw, 3, filters]). "
                         f"Received: kernel shape {kernel.shape}")
    return kernel


def scale_kernels(kernel: np.ndarray) -> np.ndarray:
    """Each kernel min-max scaled to [0, 1] on its own; a constant kernel becomes 0.5.

    Args:
        kernel: [kh, kw, 3, filters].

    Returns:
        float32 [filters, kh, kw, 3].
    """
    tiles = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    span = tiles.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = np.where(span > 0, (tiles - low) / np.where(span > 0, span, 1.0), 0.5)
    return scaled.astype(np.float32)


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def tile_grid(tiles: np.ndarray, columns: int, separator: int = 1) -> np.ndarray:
    """Lays uint8 [n, h, w, 3] tiles out in rows of `columns`, with `separator`-pixel lines
    between and around them (empty places stay the separator's colour)."""
    n, h, w, _ = tiles.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + separator) + separator, columns * (w + separator) + separator, 3),
                   SEPARATOR, np.uint8)
    for i, tile in enumerate(tiles):
        top = separator + (i // columns) * (h + separator)
        left = separator + (i % columns) * (w + separator)
        grid[top:top + h, left:left + w] = tile
    return grid


def filter_grid(kernel: np.ndarray, groups: int = 1, scale: int | None = None,
                columns: int | None = None) -> np.ndarray:
    """conv1's kernels as one RGB picture, like the paper's Figure 3.

    Each kernel is min-max scaled on its own (`scale_kernels`) and enlarged `scale` times
    with nearest neighbour, so that 3x3 or 11x11 pixels stay crisp; 1-pixel lines separate
    them. With groups=2 the first and second half of the kernels (the two towers: conv2
    sees each half apart) are two blocks, one above the other.

    Args:
        kernel: [kh, kw, 3, filters].
        groups: 1, or 2 for the two-tower model.
        scale: whole enlargement factor (default: about 32 pixels a kernel).
        columns: kernels per row of a block (default: up to 16).

    Returns:
        uint8 [H, W, 3].

    Raises:
        ValueError: bad groups, scale or columns, or a kernel count that does not split in two.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise ValueError(f"`kernel` must be [kh, kw, 3, filters]. Received: shape {kernel.shape}")
    if groups not in (1, 2):
        raise ValueError(f"`groups` must be 1 or 2. Received: groups={groups!r}")
    count = kernel.shape[-1]
    if count % groups:
        raise ValueError(f"{count} kernels do not split into {groups} towers. Received: groups={groups}")
    scale = _check_positive("scale", max(1, round(FILTER_TILE / kernel.shape[0])) if scale is None
                            else scale)
    per_block = count // groups
    columns = _check_positive("columns", min(MAX_COLUMNS, per_block) if columns is None else columns)
    tiles = np.round(scale_kernels(kernel) * 255).astype(np.uint8)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    blocks = [tile_grid(tiles[g * per_block:(g + 1) * per_block], columns) for g in range(groups)]
    gap = np.full((TOWER_GAP, blocks[0].shape[1], 3), SEPARATOR, np.uint8)
    parts = [blocks[0]]
    for block in blocks[1:]:
        parts += [gap, block]
    return np.concatenate(parts, axis=0)


def save_png(path: str, pixels: np.ndarray) -> str:
    """Writes uint8 [H, W, 3] pixels as a PNG file (folders made as needed); returns `path`."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path, format="PNG")
    return path


def run_filters(model_dir: str, output: str, *, checkpoint: str = "best",
                scale: int | None = None) -> np.ndarray:
    """`visualize --show=filters`: writes a run's conv1 kernels as a PNG (see `filter_grid`).

    The towers come from the run's `groups` option. Works for trained and converted runs.

    Returns:
        The picture, uint8 [H, W, 3].

    Raises:
        FileNotFoundError: no run or weights.
    """
    from alexnet_tf import rundir

    model, info = rundir.load_trained_model(model_dir, checkpoint)
    groups = int(info.get("model_kwargs", {}).get("groups", 1))
    picture = filter_grid(conv1_kernel(model), groups=groups, scale=scale)
    save_png(output, picture)
    return picture


def nearest_neighbors(queries: np.ndarray, gallery: np.ndarray, top: int,
                      chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The `top` gallery vectors nearest to each query by Euclidean distance.

    Distances are taken from the differences themselves (not |a|^2 + |b|^2 - 2ab), so an
    exact copy is at distance 0. Ties keep gallery order.

    Args:
        queries: [Q, D].
        gallery: [G, D].
        top: neighbours per query (at most G).
        chunk: gallery rows per step (bounds the memory of the differences).

    Returns:
        (indices int [Q, k], distances float [Q, k]), nearest first, k = min(top, G).
    """
    queries = np.asarray(queries, np.float32)
    gallery = np.asarray(gallery, np.float32)
    top = min(_check_positive("top", top), len(gallery))
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"Queries and gallery need vectors of one length. Received: shapes "
                         f"{queries.shape} and {gallery.shape}")
    indices = np.zeros((len(queries), top), np.int64)
    distances = np.zeros((len(queries), top), np.float32)
    for q, vector in enumerate(queries):
        d = np.concatenate([np.sqrt(np.square(gallery[s:s + chunk] - vector).sum(axis=1))
                            for s in range(0, len(gallery), chunk)])
        order = np.argsort(d, kind="stable")[:top]
        indices[q], distances[q] = order, d[order]
    return indices, distances


def _display(paths: Sequence[str], variant: str, tile: int) -> np.ndarray:
    """The evaluation crops of image files, resized to tile x tile: uint8 [n, tile, tile, 3].

    Decoded with PIL, which also reads palette BMPs right (for display only)."""
    from PIL import Image

    from data_pipeline import preprocess

    out = np.zeros((len(paths), tile, tile, 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        crop = preprocess.eval_images(pixels, variant).numpy().astype(np.uint8)
        # Small crops (cifar's 32x32) are enlarged with nearest neighbour, large ones reduced.
        method = Image.NEAREST if crop.shape[0] < tile else Image.LANCZOS
        out[i] = np.asarray(Image.fromarray(crop).resize((tile, tile), method))
    return out


def neighbors_picture(query_paths: Sequence[str], neighbor_paths: Sequence[Sequence[str]],
                      variant: str, tile: int = NEIGHBOR_TILE) -> np.ndarray:
    """One row per query: the query, a gap, then its neighbours, each as the model sees it.

    Args:
        query_paths: Q image files.
        neighbor_paths: per query, its k neighbours' files (the same k for all).
        variant: the model variant (its evaluation crop is shown).
        tile: side of each image in pixels.

    Returns:
        uint8 [H, W, 3].
    """
    k = len(neighbor_paths[0])
    queries = tile_grid(_display(query_paths, variant, tile), 1)
    neighbors = tile_grid(_display([p for row in neighbor_paths for p in row], variant, tile), k)
    gap = np.full((queries.shape[0], QUERY_GAP, 3), SEPARATOR, np.uint8)
    return np.concatenate([queries, gap, neighbors], axis=1)


def neighbors_json_path(output: str) -> str:
    """The JSON file written beside a neighbours PNG: same name, .json."""
    return os.path.splitext(output)[0] + ".json"


def run_neighbors(model_dir: str, gallery_dir: str, query: str, output: str, *, top: int = 6,
                  checkpoint: str = "best", batch_size: int = 128, verbose: int = 1) -> dict:
    """`visualize --show=neighbors`: Figure 4, the gallery images nearest to each query by the
    Euclidean distance of their fc7 vectors.

    Writes `output` (PNG: a row per query) and the distances beside it as JSON
    (`neighbors_json_path`): {"layer", "gallery", "queries": [{"path", "neighbors":
    [{"path", "distance"}, ...]}, ...]}.

    Args:
        model_dir: the run's folder.
        gallery_dir: a folder of images searched (any depth).
        query: an image file, or a folder of them.
        output: the PNG to write.
        top: neighbours per query.
        checkpoint: "best" or "latest" weights.
        batch_size: images per forward pass.
        verbose: 1 shows progress bars.

    Returns:
        The JSON's contents.

    Raises:
        FileNotFoundError: no run, weights, gallery or query.
        ValueError: no readable query or gallery image, or a bad argument.
    """
    from alexnet_tf import rundir
    from data_pipeline import sources

    _check_positive("top", top)
    if not os.path.exists(query):
        raise FileNotFoundError(f"No query image or folder at {query!r}. Received: query={query!r}")
    sources.require_folder(gallery_dir, "Neighbours need --data_dir: a gallery folder of images",
                           "gallery folder")
    model, info = rundir.load_trained_model(model_dir, checkpoint)
    query_paths = sources.list_image_files(query) if os.path.isdir(query) else [query]
    queries = features_lib.extract_features(model, info["variant"], query_paths, "fc7", batch_size,
                                            verbose=0)
    if not queries.paths:
        raise ValueError(f"No readable query image in {query!r}.")
    gallery = features_lib.folder_features(model, info, gallery_dir, "fc7", batch_size, verbose=verbose)
    if not gallery.paths:
        raise ValueError(f"The gallery {gallery_dir!r} holds no readable image.")
    indices, distances = nearest_neighbors(queries.features, gallery.features, top)
    found = [[gallery.paths[i] for i in row] for row in indices]
    record = {"layer": "fc7", "gallery": gallery_dir, "queries": [
        {"path": path, "neighbors": [{"path": p, "distance": float(d)} for p, d in zip(names, row)]}
        for path, names, row in zip(queries.paths, found, distances)]}
    save_png(output, neighbors_picture(queries.paths, found, info["variant"]))
    rundir.atomic_write_text(neighbors_json_path(output), json.dumps(record, indent=2))
    return record
