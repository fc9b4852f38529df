"""Tests for alexnet_tf.torch_checkpoint: files written by real PyTorch, damaged files, hostile pickles."""

import io
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
from torch_files import write_state_dict

from alexnet_tf.torch_checkpoint import read_state_dict

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
ZIP_FIXTURE = os.path.join(FIXTURES, "torch_state_zip.pth")
LEGACY_FIXTURE = os.path.join(FIXTURES, "torch_state_legacy.pth")
MODEL_FIXTURE = os.path.join(FIXTURES, "torch_whole_model.pth")


def ramp(n, dtype):
    return (np.arange(n, dtype=np.float64) * 0.25 - 3).astype(dtype)


def expected_fixture():
    """The state dict tests/fixtures/make_torch_fixtures.py saves, recomputed with NumPy."""
    shared = ramp(10, np.float32)
    return {
        "features.0.weight": ramp(108, np.float32).reshape(4, 3, 3, 3),
        "features.0.bias": ramp(4, np.float32) * -1,
        "classifier.1.weight": ramp(30, np.float32).reshape(6, 5).T,
        "shared.head": shared[:4],
        "shared.tail": shared[4:],
        "stats.double": ramp(6, np.float64).reshape(2, 3),
        "stats.half": ramp(8, np.float16),
        "stats.counts": np.arange(5, dtype=np.int64) * 7 - 10,
        "stats.step": np.array(42, dtype=np.int64),
        "stats.bf16": ramp(5, ml_dtypes.bfloat16),
        "stats.mask": np.arange(5) % 2 == 0,
        "param.scale": ramp(3, np.float32),
    }


def assert_same(got, want):
    assert list(got) == list(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype.newbyteorder("="), name
        assert got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)
        assert got[name].flags.c_contiguous and got[name].flags.owndata, name


def pickle_string(s):
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def zip_with_pickle(path, pickle_bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")


def legacy_with_pickle(path, pickle_bytes):
    """A legacy-format file whose main pickle is `pickle_bytes` (after magic, protocol, sys_info)."""
    write_state_dict(path, {"w": np.ones(2, np.float32)}, legacy=True)
    data = open(path, "rb").read()
    stream = io.BytesIO(data)
    for _ in range(3):
        pickle.load(stream)
    open(path, "wb").write(data[:stream.tell()] + pickle_bytes)


def rewrite_zip(source, target, change):
    """Copies zip `source` to `target`, each member's bytes through change(name, data) (None drops it)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info.filename, data)


# --- Files written by PyTorch 2.13 --------------------------------------------------------


@pytest.mark.parametrize("path", [ZIP_FIXTURE, LEGACY_FIXTURE], ids=["zip", "legacy"])
def test_reads_torch_fixtures(path):
    assert_same(read_state_dict(path), expected_fixture())


def test_whole_model_is_refused_naming_its_class():
    with pytest.raises(ValueError, match=r"torch\.nn\.modules\.container\.Sequential.*state_dict\(\)"):
        read_state_dict(MODEL_FIXTURE)


# --- Damaged and foreign files ---------------------------------------------------------------


@pytest.mark.parametrize("path", [ZIP_FIXTURE, LEGACY_FIXTURE], ids=["zip", "legacy"])
def test_truncated_files_raise_value_error(path, tmp_path):
    data = open(path, "rb").read()
    size = len(data)
    for cut in sorted({1, 10, 50, size // 3, size // 2, 2 * size // 3, size - 200, size - 40, size - 1}):
        damaged = tmp_path / f"cut{cut}.pth"
        damaged.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=str(damaged)):
            read_state_dict(str(damaged))


def test_legacy_storage_shorter_than_declared(tmp_path):
    path = str(tmp_path / "short.pth")
    write_state_dict(path, {"w": np.ones(100, np.float32)}, legacy=True)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-4])
    with pytest.raises(ValueError, match="truncated"):
        read_state_dict(path)


def test_zip_member_shorter_than_declared(tmp_path):
    source, damaged = str(tmp_path / "full.pth"), str(tmp_path / "short.pth")
    write_state_dict(source, {"w": np.ones(100, np.float32)})
    rewrite_zip(source, damaged, lambda name, data: data[:-4] if name.endswith("data/0") else data)
    with pytest.raises(ValueError, match="truncated: storage 0 has 396 bytes"):
        read_state_dict(damaged)


def test_zip_missing_storage_member(tmp_path):
    source, damaged = str(tmp_path / "full.pth"), str(tmp_path / "missing.pth")
    write_state_dict(source, {"w": np.ones(3, np.float32), "b": np.zeros(2, np.float32)})
    rewrite_zip(source, damaged, lambda name, data: None if name.endswith("data/1") else data)
    with pytest.raises(ValueError, match="lacks storage 1"):
        read_state_dict(damaged)


def test_unknown_byte_order_is_refused(tmp_path):
    source, damaged = str(tmp_path / "little.pth"), str(tmp_path / "odd.pth")
    write_state_dict(source, {"w": np.ones(3, np.float32)})
    rewrite_zip(source, damaged, lambda name, data: b"middle" if name.endswith("byteorder") else data)
    with pytest.raises(ValueError, match="byte order 'middle'"):
        read_state_dict(damaged)


@pytest.mark.parametrize("content", [
    np.random.default_rng(0).bytes(4096),
    b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
    b"\xff\xd8\xff\xe0" + b"\0" * 100,
    b"\x89HDF\r\n\x1a\n" + b"\0" * 100,
    pickle.dumps({"w": [1.0, 2.0]}, protocol=2),
    b"",
], ids=["random", "png", "jpeg", "hdf5", "plain-pickle", "empty"])
def test_non_torch_files_raise_value_error(content, tmp_path):
    path = tmp_path / "not_torch.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        read_state_dict(str(path))


def test_zip_without_pickle_is_not_a_checkpoint(tmp_path):
    path = str(tmp_path / "other.zip")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        read_state_dict(path)


def test_torchscript_archive_is_named(tmp_path):
    path = str(tmp_path / "scripted.pt")
    zip_with_pickle(path, b"\x80\x02}.")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("archive/constants.pkl", b"\x80\x02).")
    with pytest.raises(ValueError, match="TorchScript"):
        read_state_dict(path)


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_state_dict(str(tmp_path / "absent.pth"))
    with pytest.raises(IsADirectoryError):
        read_state_dict(str(tmp_path))


# --- Hostile pickles: refused before anything runs ------------------------------------------


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "exec"),
                                         ("builtins", "open")])
@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_hostile_global_is_refused_without_running(module, name, layout, tmp_path):
    marker = tmp_path / "pwned"
    if name == "exec":
        args = pickle_string(f"open({str(marker)!r}, 'w').close()") + b"\x85"
    elif name == "open":
        args = pickle_string(str(marker)) + pickle_string("w") + b"\x86"
    else:
        args = pickle_string(f"touch {marker}") + b"\x85"
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + args + b"R."
    path = str(tmp_path / "hostile.pth")
    (zip_with_pickle if layout == "zip" else legacy_with_pickle)(path, payload)
    with pytest.raises(ValueError, match=f"{module}\\.{name}.*nothing was run"):
        read_state_dict(path)
    assert not marker.exists()


def test_hostile_stack_global_inside_a_state_dict_is_refused(tmp_path):
    """Protocol 4's STACK_GLOBAL, as the value of an entry after a valid tensor."""
    marker = tmp_path / "pwned"
    path = str(tmp_path / "hostile.pth")
    write_state_dict(path, {"w": np.ones(2, np.float32)})
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    body = members["archive/data.pkl"][:-2]  # without SETITEMS, STOP
    evil = (pickle_string("x") + pickle_string("builtins") + pickle_string("print") + b"\x93"
            + pickle_string(str(marker)) + b"\x85R")
    members["archive/data.pkl"] = b"\x80\x04" + body[2:] + evil + b"u."
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ValueError, match=r"builtins\.print"):
        read_state_dict(path)


def test_persistent_id_other_than_a_storage_is_refused(tmp_path):
    path = str(tmp_path / "pid.pth")
    zip_with_pickle(path, b"\x80\x02" + pickle_string("module") + b"\x85Q.")
    with pytest.raises(ValueError, match="not a tensor storage"):
        read_state_dict(path)


# --- What a file may hold around its tensors -------------------------------------------------


def wrapped_zip(path, prefix_items, suffix_items=b""):
    """A zip checkpoint {..prefix_items.., 'state_dict': {'w': tensor}, ..suffix_items..}."""
    write_state_dict(path, {"w": np.arange(3, dtype=np.float32)})
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    inner = members["archive/data.pkl"][2:-1]  # the OrderedDict without PROTO and STOP
    members["archive/data.pkl"] = (b"\x80\x02}(" + prefix_items + pickle_string("state_dict") + inner
                                   + suffix_items + b"u.")
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)


def test_wrapped_state_dict_is_unwrapped(tmp_path):
    path = str(tmp_path / "wrapped.pth")
    wrapped_zip(path, pickle_string("epoch") + b"K\x03", pickle_string("best") + b"G" + struct.pack(">d", 0.5))
    got = read_state_dict(path)
    assert list(got) == ["w"]
    np.testing.assert_array_equal(got["w"], np.arange(3, dtype=np.float32))


def test_dict_without_a_state_dict_is_refused(tmp_path):
    path = str(tmp_path / "odd.pth")
    zip_with_pickle(path, b"\x80\x02}(" + pickle_string("epoch") + b"K\x03u.")
    with pytest.raises(ValueError, match="entry 'epoch' is a int"):
        read_state_dict(path)
    zip_with_pickle(path, b"\x80\x02]K\x01a.")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        read_state_dict(path)


# --- Round trips through tests/torch_files.py -------------------------------------------------


def round_trip_arrays():
    return {
        "conv.weight": ramp(2 * 3 * 4 * 5, np.float32).reshape(2, 3, 4, 5),
        "fc.weight": ramp(35, np.float32).reshape(5, 7).T,  # non-contiguous input
        "double": ramp(6, np.float64).reshape(3, 2),
        "half": ramp(9, np.float16),
        "bf16": ramp(6, ml_dtypes.bfloat16),
        "count": np.arange(4, dtype=np.int64) * 10**12 - 2,
        "i32": np.arange(3, dtype=np.int32) - 1,
        "i8": np.arange(3, dtype=np.int8) - 1,
        "u8": np.arange(3, dtype=np.uint8) + 250,
        "step": np.array(123456789012, dtype=np.int64),  # 0-d
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
        "big_endian_input": np.arange(4, dtype=">f4"),
    }


@pytest.mark.parametrize("legacy,byteorder", [(False, "little"), (True, "little"), (False, "big")],
                         ids=["zip", "legacy", "zip-big-endian"])
def test_round_trip(legacy, byteorder, tmp_path):
    arrays = round_trip_arrays()
    path = str(tmp_path / "round.pth")
    write_state_dict(path, arrays, legacy=legacy, byteorder=byteorder)
    assert_same(read_state_dict(path), arrays)
