"""Loading TensorFlow for the command line: the oneDNN choice applied first, and TensorFlow's
C++ start-up log lines filtered by TF_CPP_MIN_LOG_LEVEL. Imports no TensorFlow itself."""

from __future__ import annotations

import os
import re
import sys
import tempfile

# A line of TensorFlow's C++ logging: severity letter, MMDD, time, thread, file:line].
_CPP_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_CPP_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def filter_cpp_log(text: str, min_level: int) -> str:
    """Drops C++ log lines under `min_level` (TF_CPP_MIN_LOG_LEVEL's scale: 0 INFO .. 3 FATAL).

    Fatal lines and every line that is not a C++ log line (Python warnings, tracebacks)
    are kept. From level 1 on, Abseil's notice that logging is not initialised goes too,
    and so does the cuInit error when TensorFlow also logged that no CUDA driver is
    installed (a CPU-only machine, where that failure is expected).
    """
    no_driver = min_level > 0 and "Could not find cuda drivers" in text
    kept = []
    for line in text.splitlines(keepends=True):
        match = _CPP_LOG_LINE.match(line)
        if match and _CPP_SEVERITY[match.group(1)] < min(min_level, 3):
            continue
        if match and no_driver and "failed call to cuInit" in line:
            continue
        if min_level > 0 and line.startswith("WARNING: All log messages before absl::InitializeLog()"):
            continue
        kept.append(line)
    return "".join(kept)


def import_tensorflow_quietly(onednn: str = "auto") -> None:
    """Imports TensorFlow, with `onednn` (--onednn) applied, and finds its devices with
    TF_CPP_MIN_LOG_LEVEL honoured.

    TensorFlow's start-up lines (oneDNN notice, CUDA probing) are written by C++ logging
    before it reads TF_CPP_MIN_LOG_LEVEL, so stderr is caught at the file-descriptor
    level meanwhile and replayed through `filter_cpp_log`. On failure all of it is replayed.
    """
    from alexnet_tf import cpu_info
    cpu_info.apply_onednn(onednn)  # read once, when TensorFlow loads
    if "tensorflow" in sys.modules:
        return
    try:
        min_level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        min_level = 0
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        failed = True
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
            sys.stderr.write(text if failed else filter_cpp_log(text, min_level))
            sys.stderr.flush()
