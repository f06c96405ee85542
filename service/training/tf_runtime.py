"""TensorFlow runtime: imports TensorFlow and Keras quietly, and knows their start-up noise.

Import `tf` and `keras` from here. TensorFlow's native code writes a few lines to stderr when
it loads and when it looks for devices: absl's "before absl::InitializeLog()" notice, INFO
lines (oneDNN, "Could not find cuda drivers") and, without a GPU, an ERROR line for the
failed cuInit. TF_CPP_MIN_LOG_LEVEL, GLOG_minloglevel, ABSL_MIN_LOG_LEVEL and
CUDA_VISIBLE_DEVICES do not hide them (measured with TensorFlow 2.21), because they are
written before TensorFlow reads its log settings. So the import and the device discovery run
with file descriptor 2 captured, and every captured line that is not known noise is written
back: a real error still shows.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ABSL_PREINIT = b"WARNING: All log messages before absl::InitializeLog() is called"
ABSL_INFO_OR_WARNING = re.compile(rb"[IW]\d{4} ")  # absl's prefix: severity, then MMDD
CUINIT_FAILED = re.compile(rb"E\d{4} .*failed call to cuInit")


def has_gpu_driver() -> bool:
    """Whether an NVIDIA driver is loaded: then a failed cuInit is a real error."""
    return os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia")


def is_startup_noise(line: bytes) -> bool:
    """A line TensorFlow writes on every start on a CPU-only machine, and nothing else."""
    if line.startswith(ABSL_PREINIT) or ABSL_INFO_OR_WARNING.match(line):
        return True
    return CUINIT_FAILED.match(line) is not None and not has_gpu_driver()


@contextmanager
def native_stderr_filtered(is_noise: Callable[[bytes], bool]) -> Iterator[None]:
    """Capture file descriptor 2 during the block; then write back each line not `is_noise`.

    The capture is a temporary file, not a pipe: nothing reads it during the block, and a full
    pipe would block the writer. Without a usable temporary directory, nothing is filtered.
    """
    try:
        capture = tempfile.TemporaryFile()
    except OSError:
        yield
        return
    with capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()  # Python's own writes in the block belong to the capture too
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture if not is_noise(line))
            while kept:
                kept = kept[os.write(2, kept) :]


with native_stderr_filtered(is_startup_noise):
    import keras  # noqa: E402
    import tensorflow as tf  # noqa: E402

    # Device discovery logs the cuInit failure; done here, not at the first op. It does not
    # start the eager runtime, so thread pools can still be set afterwards (learner.use_threads).
    tf.config.list_physical_devices()

__all__ = ["keras", "tf"]
