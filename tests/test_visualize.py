"""Pictures of a run: conv1's kernels against a per-kernel min-max scaling done here in NumPy,
fc7 nearest neighbours against np.linalg.norm, Grad-CAM against its formula and on a model
that must look at one quadrant, and the features / visualize / predict --explain commands."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import gradcam, visualize
from alexnet_tf.model import build_alexnet
from data_pipeline import preprocess
from export import predict
from test_export_common import CLASS_NAMES, encode, make_run, random_images


# conv1 kernels as a grid (the paper's Fig. 3)

def expected_tiles(kernel, scale):
    """Each kernel min-max scaled on its own (constant: 0.5), as uint8, enlarged `scale` times."""
    tiles = []
    for i in range(kernel.shape[-1]):
        k = kernel[..., i].astype(np.float64)
        span = k.max() - k.min()
        unit = (k - k.min()) / span if span > 0 else np.full(k.shape, 0.5)
        tiles.append(np.kron(np.round(unit * 255), np.ones((scale, scale, 1))).astype(np.uint8))
    return tiles


def check_grid(grid, kernel, *, scale, columns, groups):
    tiles = expected_tiles(kernel, scale)
    side = kernel.shape[0] * scale
    per_block = len(tiles) // groups
    rows = -(-per_block // columns)
    block_height = rows * (side + 1) + 1
    assert grid.dtype == np.uint8
    assert grid.shape == (groups * block_height + (groups - 1) * visualize.TOWER_GAP,
                          columns * (side + 1) + 1, 3)
    covered = np.zeros(grid.shape[:2], bool)
    for i, tile in enumerate(tiles):
        block, j = divmod(i, per_block)
        top = block * (block_height + visualize.TOWER_GAP) + 1 + (j // columns) * (side + 1)
        left = 1 + (j % columns) * (side + 1)
        np.testing.assert_array_equal(grid[top:top + side, left:left + side], tile, err_msg=str(i))
        covered[top:top + side, left:left + side] = True
    assert (grid[~covered] == visualize.SEPARATOR).all()  # separators and gaps


def test_cifar_filter_grid_is_each_kernel_scaled_on_its_own():
    kernel = build_alexnet("cifar", 10, seed=0).get_layer("conv1").get_weights()[0]  # [3, 3, 3, 64]
    kernel[..., 5] = 0.25  # a constant kernel is mid grey
    grid = visualize.filter_grid(kernel)
    check_grid(grid, kernel, scale=11, columns=16, groups=1)  # about 32 pixels a kernel
    assert grid.shape == (4 * 34 + 1, 16 * 34 + 1, 3)
    assert expected_tiles(kernel, 1)[5].min() == expected_tiles(kernel, 1)[5].max() == 128


@pytest.mark.parametrize("filters, groups", [(96, 2), (64, 1)])  # paper with two towers, owt
def test_11x11_filter_grids(filters, groups):
    kernel = np.random.default_rng(filters).normal(0, 0.01, (11, 11, 3, filters)).astype(np.float32)
    grid = visualize.filter_grid(kernel, groups=groups)
    check_grid(grid, kernel, scale=3, columns=16, groups=groups)
    check_grid(visualize.filter_grid(kernel, groups=groups, scale=2, columns=8), kernel,
               scale=2, columns=8, groups=groups)


def test_filter_grid_errors():
    with pytest.raises(ValueError, match=r"Received: shape \(3, 3, 1, 8\)"):
        visualize.filter_grid(np.zeros((3, 3, 1, 8)))
    with pytest.raises(ValueError, match="Received: groups=3"):
        visualize.filter_grid(np.zeros((3, 3, 3, 6)), groups=3)
    with pytest.raises(ValueError, match="do not split"):
        visualize.filter_grid(np.zeros((3, 3, 3, 7)), groups=2)
    with pytest.raises(ValueError, match="Received: scale=0"):
        visualize.filter_grid(np.zeros((3, 3, 3, 4)), scale=0)


def test_run_filters_draws_the_towers_of_run_json(tmp_path):
    model = build_alexnet("cifar", 3, seed=2)
    model_dir, _ = make_run(tmp_path / "run", model=model, model_kwargs={"groups": 2})
    output = str(tmp_path / "filters.png")
    visualize.run_filters(model_dir, output)
    picture = np.asarray(Image.open(output))
    check_grid(picture, model.get_layer("conv1").get_weights()[0], scale=11, columns=16, groups=2)


@pytest.mark.slow
def test_filters_of_a_converted_torchvision_run(tmp_path):
    import torchvision_reference as ref
    from alexnet_tf.pretrained import convert_torchvision
    from torch_files import write_state_dict

    state_dict = ref.random_state_dict(seed=1)
    weights = str(tmp_path / "alexnet.pth")
    write_state_dict(weights, state_dict)
    convert_torchvision(weights, str(tmp_path / "run"))
    output = str(tmp_path / "filters.png")
    visualize.run_filters(str(tmp_path / "run"), output)
    kernel = state_dict["features.0.weight"].transpose(2, 3, 1, 0)  # torch OIHW -> HWIO
    check_grid(np.asarray(Image.open(output)), kernel, scale=3, columns=16, groups=1)


# nearest neighbours by fc7 distance (Fig. 4)

def test_nearest_neighbors_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 7)).astype(np.float32)
    queries = np.concatenate([gallery[[3, 41]], rng.normal(size=(2, 7)).astype(np.float32)])
    indices, distances = visualize.nearest_neighbors(queries, gallery, top=5, chunk=16)
    for q, vector in enumerate(queries):
        d = np.linalg.norm(gallery.astype(np.float64) - vector, axis=1)
        np.testing.assert_array_equal(indices[q], np.argsort(d)[:5])
        np.testing.assert_allclose(distances[q], np.sort(d)[:5], rtol=1e-5)
    assert indices[0, 0] == 3 and indices[1, 0] == 41 and distances[0, 0] == distances[1, 0] == 0
    assert visualize.nearest_neighbors(queries, gallery[:3], top=5)[0].shape == (4, 3)
    with pytest.raises(ValueError, match="Received: top=0"):
        visualize.nearest_neighbors(queries, gallery, top=0)


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory):
    """An untrained cifar run (3 classes) and image folders: a gallery of class folders with a
    corrupt file, and queries that are byte copies of two gallery images."""
    root = tmp_path_factory.mktemp("viz")
    model_dir, model = make_run(root / "run", seed=7)
    gallery, queries = root / "gallery", root / "queries"
    pixels = random_images(6, 36, 48, seed=11)
    for i, name in enumerate(CLASS_NAMES * 2):
        (gallery / name).mkdir(parents=True, exist_ok=True)
        (gallery / name / f"{i}.png").write_bytes(encode(pixels[i], "PNG"))
    (gallery / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    queries.mkdir()
    copies = {str(queries / "q1.png"): str(gallery / "bird" / "2.png"),
              str(queries / "q4.png"): str(gallery / "dog" / "4.png")}
    for query, original in copies.items():
        with open(original, "rb") as f:
            open(query, "wb").write(f.read())
    return {"root": root, "model_dir": model_dir, "model": model, "gallery": str(gallery),
            "queries": str(queries), "copies": copies}


def fc7_of(model, path):
    probe = keras.Model(model.input, model.get_layer("fc7").output)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return np.asarray(probe(preprocess.eval_images(pixels[None], "cifar"), training=False))[0]


def test_neighbors_find_exact_copies_first_at_distance_zero(run_and_images):
    data = run_and_images
    output = str(data["root"] / "neighbors.png")
    record = visualize.run_neighbors(data["model_dir"], data["gallery"], data["queries"], output,
                                     top=3, verbose=0)
    with open(os.path.join(data["root"], "neighbors.json")) as f:
        assert json.load(f) == record
    assert [q["path"] for q in record["queries"]] == sorted(data["copies"])
    for query in record["queries"]:
        found = query["neighbors"]
        assert len(found) == 3 and found[0]["path"] == data["copies"][query["path"]]
        assert found[0]["distance"] == 0.0 and found[1]["distance"] > 0
        assert [n["distance"] for n in found] == sorted(n["distance"] for n in found)
        q = fc7_of(data["model"], query["path"]).astype(np.float64)
        for n in found:
            want = np.linalg.norm(fc7_of(data["model"], n["path"]) - q)
            assert n["distance"] == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert not any("broken" in n["path"] for n in found)
    # A row per query: the query, a gap, then 3 neighbours, 96 pixels each, 1-pixel lines.
    picture = np.asarray(Image.open(output))
    tile = visualize.NEIGHBOR_TILE
    assert picture.shape == (2 * (tile + 1) + 1, (tile + 2) + visualize.QUERY_GAP + 3 * (tile + 1) + 1, 3)
    # Each copy is drawn like its query: the evaluation crop enlarged 3 times.
    first = Image.open(sorted(data["copies"])[0]).convert("RGB")
    crop = preprocess.eval_images(np.asarray(first)[None], "cifar")[0].numpy().astype(np.uint8)
    enlarged = crop.repeat(3, axis=0).repeat(3, axis=1)
    np.testing.assert_array_equal(picture[1:1 + tile, 1:1 + tile], enlarged)
    left = tile + 2 + visualize.QUERY_GAP + 1
    np.testing.assert_array_equal(picture[1:1 + tile, left:left + tile], enlarged)


# Grad-CAM (Selvaraju et al. 2017)

def gap_model(classes=4, seed=0):
    """conv1 -> pool -> conv5 -> global average -> fc8: the logit is linear in conv5's output."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv5")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="fc8")(x))


def test_grad_cam_maps_follow_the_formula():
    # With a global average before a linear fc8, d logit_c / dA_ij^k = W[k, c] / (h * w):
    # alpha_k = W[k, c] / (h * w) and the map is ReLU(sum_k alpha_k A^k).
    model = gap_model(seed=1)
    images = random_images(3, 32, 32, seed=2).astype(np.float32)
    maps, classes, logits = gradcam.grad_cam_maps(model, images)
    activations = np.asarray(keras.Model(model.input, model.get_layer("conv5").output)(images))
    kernel, bias = model.get_layer("fc8").get_weights()
    want_logits = activations.mean(axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(classes, want_logits.argmax(-1))
    h, w = activations.shape[1:3]
    for b in range(3):
        want = np.maximum(activations[b] @ (kernel[:, classes[b]] / (h * w)), 0)
        np.testing.assert_allclose(maps[b], want, rtol=1e-4, atol=1e-6)
    # A chosen class, and the upsampled map scaled to [0, 1].
    _, chosen, _ = gradcam.grad_cam_maps(model, images, class_index=2)
    assert chosen.tolist() == [2, 2, 2]
    heat, _, _ = gradcam.grad_cam(model, images)
    assert heat.shape == (3, 32, 32) and heat.min() >= 0 and heat.max() <= 1


SQUARE_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]])


def square_images(n, seed):
    """Dim noise with a bright 6x6 square in a random quadrant; the square's colour is the class.

    (A class told by the quadrant alone would not do: Grad-CAM weighs each channel by its
    gradient averaged over all places, and for such classes those averages cancel out.)
    """
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 60, (n, 32, 32, 3))
    labels = np.arange(n) % 4
    quadrants = rng.integers(0, 4, n)
    for image, label, quadrant in zip(images, labels, quadrants):
        top = 16 * (quadrant // 2) + rng.integers(1, 9)
        left = 16 * (quadrant % 2) + rng.integers(1, 9)
        image[top:top + 6, left:left + 6] = SQUARE_COLOURS[label]
    return images.astype(np.float32), labels, quadrants


def test_grad_cam_heat_lies_in_the_quadrant_of_the_evidence():
    model = gap_model(seed=3)
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels, _ = square_images(256, seed=7)
    model.fit(images, labels, batch_size=32, epochs=5, verbose=0)
    test_images, test_labels, quadrants = square_images(12, seed=103)
    heat, classes, _ = gradcam.grad_cam(model, test_images)
    assert (classes == test_labels).mean() >= 0.9
    share = []
    for h, quadrant in zip(heat, quadrants):
        top, left = 16 * (quadrant // 2), 16 * (quadrant % 2)
        share.append(h[top:top + 16, left:left + 16].sum() / h.sum())
        hottest = np.unravel_index(h.argmax(), h.shape)
        assert (hottest[0] // 16, hottest[1] // 16) == (quadrant // 2, quadrant % 2)
    assert np.mean(share) > 0.5, share  # a quarter of the image holds most of the heat


def test_grad_cam_of_the_cifar_model():
    model = build_alexnet("cifar", 5, seed=8)
    images = random_images(2, 32, 32, seed=9).astype(np.float32)
    heat, classes, logits = gradcam.grad_cam(model, images)
    np.testing.assert_allclose(logits, np.asarray(model(images, training=False)), rtol=1e-4, atol=1e-5)
    assert classes.tolist() == logits.argmax(-1).tolist()
    assert heat.shape == (2, 32, 32) and heat.dtype == np.float32
    for h in heat:
        assert h.max() == pytest.approx(1.0) and h.min() == 0.0 or h.max() == 0.0
    with pytest.raises(ValueError, match="Received: layer='fc7'"):
        gradcam.grad_cam(model, images, layer="fc7")


def test_overlay_mixes_the_colour_map_with_the_image():
    from matplotlib import colormaps

    image = random_images(1, 4, 5, seed=1)[0]
    heat = np.linspace(0, 1, 20).reshape(4, 5)
    jet = colormaps["jet"](heat)[..., :3] * 255
    want = np.clip(np.round(0.5 * image + 0.5 * jet), 0, 255)
    np.testing.assert_array_equal(gradcam.overlay(image, heat), want.astype(np.uint8))
    with pytest.raises(ValueError, match="the image's size"):
        gradcam.overlay(image, heat[:3])


# predict on a run folder, with --explain

def test_predict_on_a_run_folder_with_grad_cam(run_and_images, tmp_path):
    data = run_and_images
    out = str(tmp_path / "cams")
    results, failures = predict.predict_files(data["model_dir"], [data["queries"]], top_k=2, explain=out)
    assert not failures and len(results) == 2
    model = data["model"]
    for result in results:
        pixels = np.asarray(Image.open(result.path).convert("RGB"))
        probabilities = tf.nn.softmax(model(preprocess.eval_images(pixels[None], "cifar"))).numpy()[0]
        order = np.argsort(-probabilities)[:2]
        assert [i for _, i, _ in result.top_k] == order.tolist()
        np.testing.assert_allclose([p for *_, p in result.top_k], probabilities[order], rtol=1e-4)
        stem = os.path.splitext(os.path.basename(result.path))[0]
        assert result.explanation == os.path.join(out, f"{stem}_gradcam.png")
        assert Image.open(result.explanation).size == (128, 128)  # 32x32 crop enlarged 4 times


def test_explain_is_refused_for_exported_artifacts(run_and_images, tmp_path):
    saved_model = tmp_path / "export" / "1"
    saved_model.mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"")
    tflite = str(tmp_path / "m.tflite")
    for artifact, kind in ((str(saved_model), "a SavedModel"), (tflite, "a .tflite file")):
        with pytest.raises(ValueError, match=f"is {kind}.*--artifact=MODEL_DIR"):
            predict.predict_files(artifact, [run_and_images["queries"]], explain=str(tmp_path / "cams"))
    assert not os.path.exists(tmp_path / "cams")


def test_explanation_names_stay_apart():
    taken = set()
    names = [predict._explanation_path("out", p, taken) for p in ("a/x.jpg", "b/x.png", "y.jpg")]
    assert names == [os.path.join("out", n) for n in ("x_gradcam.png", "x_2_gradcam.png", "y_gradcam.png")]


# the commands end to end

def run_cli(capsys, *args):
    """`python main.py ARGS` in this process: (exit status, stdout, stderr)."""
    import main

    argv = main.FLAGS(["main.py", *args])
    try:
        main.main(argv)
        status = 0
    except SystemExit as e:
        status = e.code
    finally:
        main.FLAGS.unparse_flags()
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_features_command(run_and_images, tmp_path, capsys):
    data = run_and_images
    output = str(tmp_path / "fc7.npz")
    status, out, err = run_cli(capsys, "features", f"--model_dir={data['model_dir']}",
                               f"--data_dir={data['gallery']}", f"--output={output}", "--batch_size=4")
    assert status == 0, err
    assert f"Wrote {output}: 6 images x 1024 fc7 features, 1 unreadable files skipped." in out
    with np.load(output) as saved:
        assert saved["features"].shape == (6, 1024)
        names = [os.path.basename(os.path.dirname(p)) for p in saved["paths"]]
        assert saved["labels"].tolist() == [CLASS_NAMES.index(n) for n in names]


def test_visualize_filters_command(run_and_images, tmp_path):
    from helpers import run_main

    output = str(tmp_path / "filters.png")
    result = run_main("visualize", f"--model_dir={run_and_images['model_dir']}", "--show=filters",
                      f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"Wrote {output} (545x137)."  # 64 kernels of 3x3, x11, 16 a row
    kernel = run_and_images["model"].get_layer("conv1").get_weights()[0]
    check_grid(np.asarray(Image.open(output)), kernel, scale=11, columns=16, groups=1)


def test_visualize_neighbors_command(run_and_images, tmp_path, capsys):
    data = run_and_images
    output = str(tmp_path / "figure4.png")
    status, out, err = run_cli(capsys, "visualize", f"--model_dir={data['model_dir']}", "--show=neighbors",
                               f"--data_dir={data['gallery']}", f"--query={data['queries']}", "--top=2",
                               f"--output={output}")
    assert status == 0, err
    assert f"Wrote {output} and {tmp_path / 'figure4.json'} (2 queries)." in out
    with open(tmp_path / "figure4.json") as f:
        record = json.load(f)
    for query in record["queries"]:
        assert [n["path"] for n in query["neighbors"]][0] == data["copies"][query["path"]]
    assert Image.open(output).size[1] == 2 * (visualize.NEIGHBOR_TILE + 1) + 1


def test_predict_explain_command(run_and_images, tmp_path, capsys):
    data = run_and_images
    cams = tmp_path / "cams"
    status, out, err = run_cli(capsys, "predict", f"--artifact={data['model_dir']}", f"--explain={cams}",
                               "--top_k=2", data["queries"])
    assert status == 0, err
    lines = out.splitlines()
    for name in ("q1", "q4"):
        index = lines.index(os.path.join(data["queries"], f"{name}.png"))
        assert lines[index + 3] == f"  Grad-CAM: {cams / f'{name}_gradcam.png'}"
        assert os.path.isfile(cams / f"{name}_gradcam.png")
