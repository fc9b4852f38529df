"""The CPU as the kernels see it: ISA level, bfloat16 units and the ONEDNN_MAX_CPU_ISA cap."""

import os

import pytest

from alexnet_tf import cpu_info

AVX2 = "fpu sse4_1 avx avx2 fma"
AVX512 = AVX2 + " avx512f avx512bw avx512vl"
XEON = AVX512 + " avx512_bf16 amx_bf16 amx_tile amx_int8"


def _cpuinfo(tmp_path, flags, model="Test CPU @ 2.0GHz"):
    path = os.path.join(tmp_path, "cpuinfo")
    with open(path, "w") as f:
        for i in range(2):  # two processors: the first one's fields count
            f.write(f"processor\t: {i}\nmodel name\t: {model}\nflags\t\t: {flags}\n\n")
    return path


@pytest.mark.parametrize("flags, level, bf16", [
    ("fpu sse4_1", "SSE4.1", False),
    ("fpu sse4_1 avx", "AVX", False),
    (AVX2, "AVX2", False),
    ("fpu sse4_1 avx avx2", "AVX", False),  # AVX2 without FMA is not what AVX2 kernels need
    (AVX512, "AVX-512", False),
    (AVX512 + " avx512_bf16", "AVX-512", True),
    (XEON, "AMX", True),
])
def test_level_and_bfloat16_units_follow_the_flags(tmp_path, flags, level, bf16):
    info = cpu_info.detect(_cpuinfo(tmp_path, flags), environ={})
    assert (info.isa, info.native_isa, info.bfloat16_units, info.isa_cap) == (level, level, bf16, None)
    assert info.model_name == "Test CPU @ 2.0GHz"
    assert info.describe().startswith(f"Test CPU @ 2.0GHz, {level}")
    assert ("bfloat16 units" in info.describe()) == bf16


@pytest.mark.parametrize("cap, level, bf16", [
    ("AVX2", "AVX2", False),            # the AVX2 stand-in: no bfloat16 dot products either
    ("avx2", "AVX2", False),            # oneDNN reads the value case-insensitively
    ("AVX512_CORE", "AVX-512", False),
    ("AVX512_CORE_BF16", "AVX-512", True),
    ("AVX512_CORE_AMX", "AMX", True),   # a cap above nothing changes nothing
    ("NOT_AN_ISA", "AMX", True),        # oneDNN ignores an unknown value, so do we
])
def test_onednn_cap_lowers_the_level(tmp_path, cap, level, bf16):
    info = cpu_info.detect(_cpuinfo(tmp_path, XEON), environ={"ONEDNN_MAX_CPU_ISA": cap})
    assert (info.isa, info.native_isa, info.bfloat16_units) == (level, "AMX", bf16)
    assert info.isa_cap == cap.upper()
    assert ("capped by ONEDNN_MAX_CPU_ISA" in info.describe()) == (level != "AMX")
    assert info.capped_dtypes == (("bfloat16",) if level == "AVX2" else ())  # no AVX512-FP16 here
    record = info.record()
    assert record["isa"] == level and record["native_isa"] == "AMX" and record["cores"] == info.cores >= 1


def test_cap_never_adds_what_the_cpu_lacks(tmp_path):
    info = cpu_info.detect(_cpuinfo(tmp_path, AVX2), environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})
    assert (info.isa, info.bfloat16_units) == ("AVX2", False)


def test_without_cpuinfo_nothing_is_assumed(tmp_path):
    info = cpu_info.detect(os.path.join(tmp_path, "missing"), environ={})
    assert (info.model_name, info.isa, info.bfloat16_units) == ("unknown", "unknown", False)


def test_capped_cpu_does_not_pick_bfloat16(tmp_path, monkeypatch):
    from alexnet_tf.distribute import resolve_precision
    path = _cpuinfo(tmp_path, XEON)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert resolve_precision("auto", path)[0] == "mixed_bfloat16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert resolve_precision("auto", path)[0] == "float32"


def test_a_cap_that_takes_the_half_types_away_refuses_them(tmp_path, monkeypatch):
    from alexnet_tf.distribute import resolve_precision
    path = _cpuinfo(tmp_path, XEON + " avx512_fp16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # bfloat16 stays, float16 goes
    assert resolve_precision("mixed_bfloat16", path)[0] == "mixed_bfloat16"
    with pytest.raises(ValueError, match="ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 leaves oneDNN no float16"):
        resolve_precision("mixed_float16", path)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(ValueError, match="no bfloat16 kernels"):
        resolve_precision("mixed_bfloat16", path)
    assert resolve_precision("float32", path)[0] == "float32"
    # A CPU without AVX-512: TensorFlow keeps half types off oneDNN, so nothing is refused.
    assert cpu_info.detect(_cpuinfo(tmp_path, AVX2), environ={"ONEDNN_MAX_CPU_ISA": "AVX"}).capped_dtypes == ()
