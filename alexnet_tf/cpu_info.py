"""What the host CPU offers the convolution and matmul kernels: model name, ISA level, cores.

The ISA level is the one oneDNN uses: the CPU's own (from /proc/cpuinfo's flags) unless
`ONEDNN_MAX_CPU_ISA` caps it, which makes a Xeon with AMX compute like an AVX2 machine.
XLA's code (the augmentation, the fused LRN and SGD) has its own cap, `--xla_cpu_max_isa`
in `XLA_FLAGS`, which is recorded beside it.
Per-CPU choices (`--precision=auto`, the kernel-gradient form, `--onednn=auto`) read it
from here. This module does not import TensorFlow: `apply_onednn` must run before it loads.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys

from alexnet_tf.config import ONEDNN_CHOICES

# Levels in increasing order; the keys are what the choices and benchmark records name.
LEVELS = ("SSE4.1", "AVX", "AVX2", "AVX-512", "AMX")

# Caps that keep oneDNN's float16 kernels (AVX512_CORE_FP16 and the AMX levels above it).
_FLOAT16_CAPS = {"AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
                 "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16"}

# ONEDNN_MAX_CPU_ISA values (oneDNN's names) -> (level, may use bfloat16 dot products).
_ONEDNN_CAPS = {
    "SSE41": ("SSE4.1", False), "AVX": ("AVX", False), "AVX2": ("AVX2", False),
    "AVX2_VNNI": ("AVX2", False), "AVX2_VNNI_2": ("AVX2", False),
    "AVX512_CORE": ("AVX-512", False), "AVX512_CORE_VNNI": ("AVX-512", False),
    "AVX512_CORE_BF16": ("AVX-512", True), "AVX512_CORE_FP16": ("AVX-512", True),
    "AVX10_1_512": ("AVX-512", True),
    "AVX512_CORE_AMX": ("AMX", True), "AVX10_1_512_AMX": ("AMX", True),
    "AVX512_CORE_AMX_FP16": ("AMX", True), "AVX10_1_512_AMX_FP16": ("AMX", True),
}


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """The host CPU as the kernels see it.

    Attributes:
        model_name: /proc/cpuinfo's "model name" ("unknown" where there is none).
        isa: the ISA level the kernels use, one of LEVELS ("unknown" without /proc/cpuinfo).
        native_isa: the CPU's own level, before `ONEDNN_MAX_CPU_ISA`.
        isa_cap: the value of `ONEDNN_MAX_CPU_ISA`, or None.
        bfloat16_units: the kernels may multiply bfloat16 in hardware (AMX-BF16 or
            AVX512-BF16, not capped away); without them oneDNN emulates bfloat16.
        cores: the cores this process may run on.
        xla_isa_cap: the value of `--xla_cpu_max_isa` in `XLA_FLAGS`, or None.
        capped_dtypes: the half-precision types ("bfloat16", "float16") that the cap takes
            from oneDNN while TensorFlow, which reads the CPU and not the cap, still sends
            their convolutions and matmuls to it: there they abort the process.
    """
    model_name: str
    isa: str
    native_isa: str
    isa_cap: str | None
    bfloat16_units: bool
    cores: int
    capped_dtypes: tuple = ()
    xla_isa_cap: str | None = None

    def describe(self) -> str:
        """One line for logs and benchmark headers, e.g. "AMD EPYC, AVX2 (AVX-512 capped), 2 cores"."""
        isa = self.isa if self.isa == self.native_isa else f"{self.isa} ({self.native_isa} capped " \
                                                            f"by ONEDNN_MAX_CPU_ISA={self.isa_cap})"
        bf16 = ", bfloat16 units" if self.bfloat16_units else ""
        xla = f", XLA code capped at {self.xla_isa_cap}" if self.xla_isa_cap else ""
        return f"{self.model_name}, {isa}{bf16}, {self.cores} cores{xla}"

    def record(self) -> dict:
        """The fields of a benchmark record."""
        return {"cpu": self.model_name, "isa": self.isa, "native_isa": self.native_isa,
                "isa_cap": self.isa_cap, "xla_isa_cap": self.xla_isa_cap,
                "bfloat16_units": self.bfloat16_units, "cores": self.cores}

    def check_dtype(self, dtype: str) -> None:
        """Raises ValueError (one line) when the cap leaves oneDNN no kernels for `dtype`."""
        if dtype in self.capped_dtypes and onednn_enabled() is not False:
            raise ValueError(f"ONEDNN_MAX_CPU_ISA={self.isa_cap} leaves oneDNN no {dtype} kernels on this "
                             f"{self.native_isa} CPU, and TensorFlow would still send {dtype} ops to them; "
                             f"unset ONEDNN_MAX_CPU_ISA or train in float32.")


# TensorFlow's Linux x86 wheels turn oneDNN on by default only on CPUs with one of these
# (DefaultOneDnnPolicy in tensorflow/core/util/util.cc); on the others, AVX2-only CPUs and
# AVX-512 ones without VNNI among them, its convolutions and matmuls run in Eigen.
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
_ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
_applied_reason = None  # why the running process has oneDNN on or off (apply_onednn)


def choose_onednn(choice: str, cpuinfo: str = "/proc/cpuinfo", environ=None, machine: str | None = None,
                  gpu_devices: tuple = ("/dev/nvidiactl", "/dev/kfd")) -> tuple[bool | None, str]:
    """Whether TensorFlow should run with oneDNN, and why.

    "auto" keeps an explicit TF_ENABLE_ONEDNN_OPTS and TensorFlow's default where that is
    on, and turns oneDNN on for x86 CPUs where TensorFlow leaves it off: there float32
    training is 1.7-1.9x faster with it (docs/performance.md). Hosts with a GPU keep
    TensorFlow's default (the model runs on the GPU).

    Returns:
        (True/False, reason), or (None, reason) where TensorFlow's default stands.
    """
    if choice not in ONEDNN_CHOICES:
        raise ValueError(f"`onednn` must be one of {ONEDNN_CHOICES}. Received: onednn={choice!r}")
    if choice != "auto":
        return choice == "on", f"--onednn={choice}"
    environ = os.environ if environ is None else environ
    raw = environ.get(_ONEDNN_ENV)
    if raw is not None:
        value = raw.strip().lower()
        if value not in ("0", "1", "false", "true"):
            raise ValueError(f"{_ONEDNN_ENV}={raw!r} is neither 0/1 nor false/true; unset it or use "
                             f"--onednn=on or --onednn=off.")
        return value in ("1", "true"), f"{_ONEDNN_ENV}={raw}"
    flags = _read_flags(cpuinfo)
    if set(ONEDNN_DEFAULT_FLAGS) & flags:
        return None, "TensorFlow's default on CPUs with VNNI, AVX512-BF16 or AMX"
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return None, "TensorFlow's default (not an x86 CPU)"
    if any(os.path.exists(device) for device in gpu_devices):
        return None, "TensorFlow's default (a GPU host)"
    return True, ("auto: TensorFlow leaves it off on x86 CPUs without VNNI, AVX512-BF16 or AMX, "
                  "where its float32 convolutions are faster with it")


def apply_onednn(choice: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """Sets TF_ENABLE_ONEDNN_OPTS for `choose_onednn(choice)`; returns the reason.

    TensorFlow reads the variable once, when it loads: called after that, a choice that
    differs from the running state is refused (ValueError).
    """
    global _applied_reason
    enabled, reason = choose_onednn(choice, cpuinfo)
    if "tensorflow" in sys.modules:
        running = onednn_enabled()
        if enabled is not None and running is not None and running != enabled:
            raise ValueError(f"oneDNN is {'on' if running else 'off'} in this process, which loaded "
                             f"TensorFlow already; set {_ONEDNN_ENV} before importing it.")
    elif enabled is not None:
        os.environ[_ONEDNN_ENV] = "1" if enabled else "0"
    _applied_reason = reason
    return reason


def onednn_enabled() -> bool | None:
    """Whether the loaded TensorFlow runs its CPU ops through oneDNN (None before it loads)."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow without the probe
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def onednn_description() -> str:
    """"on" or "off" with the reason, for logs, e.g. "on (TF_ENABLE_ONEDNN_OPTS=1)"."""
    enabled = onednn_enabled()
    state = "unknown" if enabled is None else "on" if enabled else "off"
    reason = _applied_reason or (f"{_ONEDNN_ENV}={os.environ[_ONEDNN_ENV]}" if _ONEDNN_ENV in os.environ
                                 else "TensorFlow's default")
    return f"{state} ({reason})"


def _read_flags(cpuinfo: str) -> set:
    read = _read_cpuinfo(cpuinfo)
    return read[1] if read else set()


def _read_cpuinfo(cpuinfo: str) -> tuple[str, set] | None:
    """(model name, flags) of the first processor; None when the file cannot be read."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return None
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _native_level(flags: set) -> str:
    if {"amx_tile", "amx_bf16"} & flags and "avx512f" in flags:
        return "AMX"
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "AVX-512"
    if {"avx2", "fma"} <= flags:
        return "AVX2"
    if "avx" in flags:
        return "AVX"
    return "SSE4.1"


def _xla_cap(xla_flags: str) -> str | None:
    """The last `--xla_cpu_max_isa=VALUE` of an XLA_FLAGS string, upper-cased; None without one."""
    value = None
    for flag in xla_flags.split():
        name, _, rest = flag.partition("=")
        if name.lstrip("-") == "xla_cpu_max_isa" and rest:
            value = rest.strip().upper()
    return value


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def detect(cpuinfo: str = "/proc/cpuinfo", environ=None) -> CpuInfo:
    """Reads the CPU's model name and flags and applies `ONEDNN_MAX_CPU_ISA` (and notes XLA's cap).

    Args:
        cpuinfo: the file to read (a test passes its own).
        environ: the environment to read the caps from (default: os.environ).

    Returns:
        A CpuInfo. Without a readable cpuinfo (not Linux) the ISA is "unknown" and no
        bfloat16 units are assumed: per-CPU choices then fall back to float32 defaults.
    """
    environ = os.environ if environ is None else environ
    cap = (environ.get("ONEDNN_MAX_CPU_ISA") or "").strip().upper() or None
    xla_cap = _xla_cap(environ.get("XLA_FLAGS", ""))
    read = _read_cpuinfo(cpuinfo)
    if read is None:
        return CpuInfo("unknown", "unknown", "unknown", cap, False, _cores(), xla_isa_cap=xla_cap)
    model, flags = read
    native = _native_level(flags)
    bf16 = bool({"amx_bf16", "avx512_bf16"} & flags)
    isa, capped = native, []
    if cap in _ONEDNN_CAPS:
        level, cap_bf16 = _ONEDNN_CAPS[cap]
        if LEVELS.index(level) < LEVELS.index(native):
            isa = level
        bf16 = bf16 and cap_bf16 and not (level != "AMX" and "avx512_bf16" not in flags)
        # TensorFlow routes bfloat16 to oneDNN on any AVX-512 CPU, float16 where the CPU has
        # AVX512-FP16; oneDNN needs AVX512_CORE for the one, AVX512_CORE_FP16 for the other.
        if "avx512f" in flags and LEVELS.index(level) < LEVELS.index("AVX-512"):
            capped.append("bfloat16")
        if {"avx512_fp16", "amx_fp16"} & flags and cap not in _FLOAT16_CAPS:
            capped.append("float16")
    return CpuInfo(model, isa, native, cap, bf16, _cores(), tuple(capped), xla_cap)
