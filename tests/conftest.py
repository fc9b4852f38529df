"""Test set-up: quiet TensorFlow, CPU only, repository root importable."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/helpers.py

# The CLI's `--onednn=auto`, applied before any test imports TensorFlow, so that the
# in-process tests run the kernels the commands run.
from alexnet_tf import cpu_info  # noqa: E402

cpu_info.apply_onednn("auto")
