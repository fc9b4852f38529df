"""weights="imagenet" and `convert --weights=imagenet` against a real HTTP server on 127.0.0.1:
download into KERAS_HOME, cache hits without a request, the hash check, the one-line error
when the mirror is unreachable, and DataParallel's `module.` prefix. Nothing touches the
internet: every test points ALEXNET_TF_WEIGHTS_MIRROR at 127.0.0.1."""

import hashlib
import http.server
import json
import os
import socket
import threading

import keras
import numpy as np
import pytest

import torchvision_reference as ref
from alexnet_tf import AlexNet, decode_predictions, imagenet_weights, preprocess_input, pretrained
from helpers import cli_env, read_weights, run_main
from test_pretrained import structured_image
from torch_files import write_state_dict

NAME = imagenet_weights.FILE_NAME


class _Server:
    """Serves files by URL path on 127.0.0.1 from a thread and counts the requests."""

    def __init__(self):
        self.files = {}
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, folder: str, data: bytes) -> str:
        """Serves `data` as FOLDER/alexnet-owt-7be5be79.pth; returns the mirror's base URL."""
        self.files[f"/{folder}/{NAME}"] = data
        return f"{self.base}/{folder}/"


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def pth_bytes(tmp_path, arrays, **kwargs) -> bytes:
    path = tmp_path / "fixture.pth"
    write_state_dict(str(path), arrays, **kwargs)
    return path.read_bytes()


@pytest.fixture
def small(tmp_path):
    """A small torchvision-format file (one tensor) and the first 8 hex digits of its SHA-256."""
    data = pth_bytes(tmp_path, {"features.0.bias": np.arange(64, dtype=np.float32)})
    return data, hashlib.sha256(data).hexdigest()[:8]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """KERAS_HOME in tmp_path; returns where the weights file lands."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home / "models" / NAME


def test_the_published_file(monkeypatch):
    monkeypatch.delenv(imagenet_weights.MIRROR_ENV, raising=False)
    assert imagenet_weights.url() == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert NAME == f"alexnet-owt-{imagenet_weights.SHA256_PREFIX}.pth"
    monkeypatch.setenv(imagenet_weights.MIRROR_ENV, "http://mirror.example/weights")
    assert imagenet_weights.url() == f"http://mirror.example/weights/{NAME}"


def test_download_then_cache_hit_without_a_request(server, small, cache, monkeypatch):
    data, prefix = small
    monkeypatch.setenv(imagenet_weights.MIRROR_ENV, server.serve("small", data))
    monkeypatch.setattr(imagenet_weights, "SHA256_PREFIX", prefix)
    before = len(server.requests)
    assert imagenet_weights.fetch() == str(cache)
    assert cache.read_bytes() == data
    assert server.requests[before:] == [f"/small/{NAME}"]
    assert imagenet_weights.fetch() == str(cache)
    assert len(server.requests) == before + 1


def test_a_tampered_download_is_refused_and_removed(server, small, cache, monkeypatch):
    data, prefix = small
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    monkeypatch.setenv(imagenet_weights.MIRROR_ENV, server.serve("tampered", tampered))
    monkeypatch.setattr(imagenet_weights, "SHA256_PREFIX", prefix)
    actual = hashlib.sha256(tampered).hexdigest()[:8]
    with pytest.raises(ValueError, match=f"Refusing .*/tampered/{NAME}: its SHA-256 starts with "
                       f"{actual}, not {prefix}"):
        imagenet_weights.fetch()
    assert not cache.exists() and os.listdir(cache.parent) == []


def test_a_tampered_cache_file_is_refused_without_a_request(server, small, cache, monkeypatch):
    data, prefix = small
    monkeypatch.setenv(imagenet_weights.MIRROR_ENV, server.serve("genuine", data))
    monkeypatch.setattr(imagenet_weights, "SHA256_PREFIX", prefix)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not the weights")
    before = len(server.requests)
    with pytest.raises(ValueError, match="removed from the cache"):
        imagenet_weights.fetch()
    assert not cache.exists() and len(server.requests) == before
    assert imagenet_weights.fetch() == str(cache) and cache.read_bytes() == data  # downloads again


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mirror_is_one_line(cache, monkeypatch, server):
    mirror = f"http://127.0.0.1:{closed_port()}/models"
    monkeypatch.setenv(imagenet_weights.MIRROR_ENV, mirror)
    with pytest.raises(ConnectionError) as error:
        AlexNet(weights="imagenet")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"Could not download the ImageNet weights from {mirror}/{NAME} (")
    assert f'AlexNet(weights="/path/{NAME}")' in message
    assert f"convert --weights=/path/{NAME}" in message
    assert not cache.exists()
    monkeypatch.setenv(imagenet_weights.MIRROR_ENV, f"{server.base}/nothing-here")
    with pytest.raises(ConnectionError, match=r"/nothing-here/.*\(Not Found\)"):
        imagenet_weights.fetch()


def test_cli_convert_unreachable_mirror_is_one_line(tmp_path):
    mirror = f"http://127.0.0.1:{closed_port()}/"
    env = cli_env(KERAS_HOME=str(tmp_path / "keras_home"),
                  **{imagenet_weights.MIRROR_ENV: mirror})
    run = tmp_path / "run"
    result = run_main("convert", "--weights=imagenet", f"--model_dir={run}", env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: Could not download the ImageNet weights from {mirror}{NAME}")
    assert "--weights=" in lines[0] and not run.exists()


@pytest.fixture(scope="module")
def full_state():
    """torchvision AlexNet weights (random, float16 to halve the bytes served)."""
    return ref.random_state_dict(seed=11, dtype=np.float16)


def test_imagenet_weights_equal_torchvision(server, full_state, tmp_path, cache, monkeypatch):
    data = pth_bytes(tmp_path, full_state, legacy=True)  # torchvision's own file is legacy format
    monkeypatch.setenv(imagenet_weights.MIRROR_ENV, server.serve("full", data))
    monkeypatch.setattr(imagenet_weights, "SHA256_PREFIX", hashlib.sha256(data).hexdigest()[:8])
    del data
    model = AlexNet(weights="imagenet")
    assert model.layers[-1].name == "predictions" and model.output.shape == (None, 1000)
    images = structured_image(256, 320, seed=1)[None]
    got = model.predict(preprocess_input(images), verbose=0)
    expected = ref.softmax(ref.forward(full_state, images[:, 16:240, 48:272]))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    _, names = pretrained.imagenet_classes()
    for row, decoded in zip(expected, decode_predictions(got, top=5)):
        assert [name for _, name, _ in decoded] == [names[i] for i in np.argsort(-row)[:5]]
    requests = len(server.requests)
    headless = AlexNet(weights="imagenet", include_top=False, pooling="max")  # from the cache
    assert len(server.requests) == requests and headless.output.shape == (None, 256)
    pool5 = keras.Model(model.input, model.get_layer("pool5").output)
    np.testing.assert_allclose(headless.predict(preprocess_input(images), verbose=0),
                               np.max(pool5(preprocess_input(images)), axis=(1, 2)), atol=1e-5)


def test_cli_convert_imagenet_from_a_data_parallel_file(server, full_state, tmp_path, cache,
                                                        monkeypatch):
    """`main.convert` in this process (the hash prefix is patched here), on a DataParallel file."""
    import main
    data = pth_bytes(tmp_path, {f"module.{k}": v for k, v in full_state.items()}, legacy=True)
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.setenv(imagenet_weights.MIRROR_ENV, server.serve("ddp", data))
    monkeypatch.setattr(imagenet_weights, "SHA256_PREFIX", digest[:8])
    del data
    run = tmp_path / "run"
    main.FLAGS.unparse_flags()
    main.FLAGS(["main.py", "convert", "--weights=imagenet", f"--model_dir={run}"])
    try:
        main.convert(["main.py", "convert"])
    finally:
        main.FLAGS.unparse_flags()
    with open(run / "run.json") as f:
        info = json.load(f)
    assert info["converted_from"]["sha256"] == digest and info["converted_from"]["file"] == str(cache)
    stored = {k.split("/")[1]: v for k, v in read_weights(str(run / "best.weights.h5")).items()
              if k.endswith("vars/0")}  # kernels, by Keras' layer path
    kernels = [stored[k] for k in sorted(stored, key=lambda k: (k.split("_")[0], len(k), k))]
    # conv1 (first conv2d) in HWIO from torch's OIHW; fc8 (last dense) transposed.
    np.testing.assert_array_equal(kernels[0], full_state["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(kernels[-1], full_state["classifier.6.weight"].T)
