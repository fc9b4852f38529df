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
    monkeypatch.setattr(cpu_info, "onednn_enabled", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # bfloat16 stays, float16 goes
    assert resolve_precision("mixed_bfloat16", path)[0] == "mixed_bfloat16"
    with pytest.raises(ValueError, match="ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 leaves oneDNN no float16"):
        resolve_precision("mixed_float16", path)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(ValueError, match="no bfloat16 kernels"):
        resolve_precision("mixed_bfloat16", path)
    assert resolve_precision("float32", path)[0] == "float32"
    monkeypatch.setattr(cpu_info, "onednn_enabled", lambda: False)  # Eigen kernels: nothing aborts
    assert resolve_precision("mixed_bfloat16", path)[0] == "mixed_bfloat16"
    # A CPU without AVX-512: TensorFlow keeps half types off oneDNN, so nothing is refused.
    assert cpu_info.detect(_cpuinfo(tmp_path, AVX2), environ={"ONEDNN_MAX_CPU_ISA": "AVX"}).capped_dtypes == ()


NO_GPU = ()  # device paths that exist on a GPU host: none in these cases


@pytest.mark.parametrize("flags, environ, machine, expected", [
    (AVX2, {}, "x86_64", True),                                     # TensorFlow leaves it off here
    (AVX512, {}, "x86_64", True),                                   # AVX-512 without VNNI: off, too
    (AVX512 + " avx512_vnni", {}, "x86_64", None),                  # TensorFlow's default: on
    (XEON, {}, "x86_64", None),
    (AVX2, {"TF_ENABLE_ONEDNN_OPTS": "0"}, "x86_64", False),        # the user's variable wins
    (XEON, {"TF_ENABLE_ONEDNN_OPTS": "false"}, "x86_64", False),
    (AVX2, {"TF_ENABLE_ONEDNN_OPTS": " 1 "}, "x86_64", True),
    ("fp asimd", {}, "aarch64", None),                              # not x86: TensorFlow decides
])
def test_auto_onednn(tmp_path, flags, environ, machine, expected):
    enabled, reason = cpu_info.choose_onednn("auto", _cpuinfo(tmp_path, flags), environ, machine, NO_GPU)
    assert enabled is expected
    assert ("TF_ENABLE_ONEDNN_OPTS" in reason) == bool(environ)


def test_auto_onednn_keeps_the_default_on_a_gpu_host(tmp_path):
    device = os.path.join(tmp_path, "nvidiactl")
    open(device, "w").close()
    assert cpu_info.choose_onednn("auto", _cpuinfo(tmp_path, AVX2), {}, "x86_64", (device,))[0] is None
    assert cpu_info.choose_onednn("auto", _cpuinfo(tmp_path, AVX2), {}, "x86_64", (device + "-gone",))[0] is True


def test_explicit_onednn_choice_overrides_the_environment(tmp_path):
    path = _cpuinfo(tmp_path, XEON)
    assert cpu_info.choose_onednn("off", path, {"TF_ENABLE_ONEDNN_OPTS": "1"}) == (False, "--onednn=off")
    assert cpu_info.choose_onednn("on", path, {"TF_ENABLE_ONEDNN_OPTS": "0"}) == (True, "--onednn=on")
    with pytest.raises(ValueError, match="TF_ENABLE_ONEDNN_OPTS='yes'"):
        cpu_info.choose_onednn("auto", path, {"TF_ENABLE_ONEDNN_OPTS": "yes"})
    with pytest.raises(ValueError, match="must be one of"):
        cpu_info.choose_onednn("sometimes", path, {})


@pytest.mark.parametrize("choice", ["on", "off"])
def test_apply_onednn_sets_what_tensorflow_runs(choice):
    """In a fresh process: the choice reaches TensorFlow, which reports it back."""
    import subprocess
    import sys
    code = ("from alexnet_tf import cpu_info; cpu_info.apply_onednn(%r); import tensorflow; "
            "print(cpu_info.onednn_enabled(), cpu_info.onednn_description())" % choice)
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(choice == "on"), choice, f"(--onednn={choice})"]


def test_apply_onednn_after_tensorflow_loaded_refuses_a_change(tmp_path):
    import tensorflow  # noqa: F401  (loaded by the suite already; oneDNN as conftest chose)
    running = cpu_info.onednn_enabled()
    assert running in (True, False)
    assert cpu_info.apply_onednn("on" if running else "off") == f"--onednn={'on' if running else 'off'}"
    with pytest.raises(ValueError, match="loaded TensorFlow already"):
        cpu_info.apply_onednn("off" if running else "on")


@pytest.mark.parametrize("xla_flags, cap", [
    ("", None),
    ("--xla_cpu_max_isa=AVX2", "AVX2"),
    ("--xla_dump_to=/tmp/x  --xla_cpu_max_isa=avx512", "AVX512"),
    ("--xla_cpu_max_isa=SSE4_2 --xla_cpu_max_isa=AVX2", "AVX2"),  # the last one wins
    ("--xla_cpu_max_isa_other=AVX2", None),
])
def test_xla_cap_is_recorded_beside_the_onednn_one(tmp_path, xla_flags, cap):
    info = cpu_info.detect(_cpuinfo(tmp_path, XEON), environ={"XLA_FLAGS": xla_flags})
    assert info.xla_isa_cap == cap and info.record()["xla_isa_cap"] == cap
    assert ("XLA code capped at" in info.describe()) == (cap is not None)
    assert info.isa == "AMX"  # oneDNN's level is its own cap's business
