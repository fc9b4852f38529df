"""torchvision's AlexNet written out in NumPy (NCHW, torch's weight layout), as an
independent reference for the converted model, and random weights in its key layout."""

import numpy as np

# (key prefix, weight shape [out, in, kh, kw] or [out, in], stride, padding)
TORCHVISION_ALEXNET = (
    ("features.0", (64, 3, 11, 11), 4, 2),
    ("features.3", (192, 64, 5, 5), 1, 2),
    ("features.6", (384, 192, 3, 3), 1, 1),
    ("features.8", (256, 384, 3, 3), 1, 1),
    ("features.10", (256, 256, 3, 3), 1, 1),
    ("classifier.1", (4096, 9216), None, None),
    ("classifier.4", (4096, 4096), None, None),
    ("classifier.6", (1000, 4096), None, None),
)
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def random_state_dict(seed=0, dtype=np.float32) -> dict:
    """He-scaled normal weights and small biases under torchvision's AlexNet keys."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, shape, _, _ in TORCHVISION_ALEXNET:
        fan_in = int(np.prod(shape[1:]))
        out[f"{prefix}.weight"] = (rng.standard_normal(shape, np.float32)
                                   * np.float32(np.sqrt(2.0 / fan_in))).astype(dtype)
        out[f"{prefix}.bias"] = (rng.standard_normal(shape[0], np.float32) * 0.01).astype(dtype)
    return out


def _conv(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    o, c, kh, kw = w.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    n, _, oh, ow = windows.shape[:4]
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)
    out = cols @ w.reshape(o, -1).T + b
    return out.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)


def _max_pool(x):  # 3x3, stride 2, no padding
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))


def forward(state_dict: dict, images_uint8: np.ndarray) -> np.ndarray:
    """Logits of torchvision's AlexNet in float64 for [N, 224, 224, 3] uint8 crops, after
    torchvision's ToTensor and Normalize."""
    x = (images_uint8.astype(np.float64) / 255.0 - MEAN) / STD
    x = x.transpose(0, 3, 1, 2)  # NCHW
    w = {k: v.astype(np.float64) for k, v in state_dict.items()}
    for i, (prefix, _, stride, pad) in enumerate(TORCHVISION_ALEXNET[:5]):
        x = np.maximum(_conv(x, w[f"{prefix}.weight"], w[f"{prefix}.bias"], stride, pad), 0.0)
        if i in (0, 1, 4):
            x = _max_pool(x)
    assert x.shape[1:] == (256, 6, 6)  # AdaptiveAvgPool2d((6, 6)) is the identity here
    x = x.reshape(len(x), -1)  # torch's flatten of NCHW
    for prefix in ("classifier.1", "classifier.4"):
        x = np.maximum(x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"], 0.0)
    return x @ w["classifier.6.weight"].T + w["classifier.6.bias"]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
