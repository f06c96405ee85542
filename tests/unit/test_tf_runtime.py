"""TensorFlow runtime: no start-up noise on stderr, while real native errors still show."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from service.training import tf_runtime
from service.training.tf_runtime import is_startup_noise, native_stderr_filtered
from tests.support import ROOT

# What TensorFlow 2.21 prints on a CPU-only machine when it is imported plainly.
NOISE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796034047.708795   11280 port.cc:153] oneDNN custom operations are on.\n",
    b"I0000 00:00:1796034047.709198   11280 cudart_stub.cc:31] Could not find cuda drivers on "
    b"your machine, GPU will not be used.\n",
    b"W0000 00:00:1796034047.709198   11280 some.cc:1] a start-up warning\n",
)
CUINIT = (
    b"E0000 00:00:1796034050.116203   11280 cuda_platform.cc:52] failed call to cuInit: "
    b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
REAL_ERROR = b"E0000 00:00:1796034050.116203   11280 kernel.cc:7] some real error\n"
NOISE_IN_OUTPUT = re.compile(r"absl::InitializeLog|^[IW]\d{4} |cuInit|oneDNN|cuda drivers", re.M)


def test_importing_the_learner_and_running_a_model_prints_no_tensorflow_noise() -> None:
    script = (
        "import service.training.learner as learner\n"
        "model = learner.builtin_learner(18).model\n"
        "print(model(learner.tf.zeros((2, 18))).shape)\n"
    )
    # The service's own default log level, whatever this test process was started with.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 1)"
    assert not NOISE_IN_OUTPUT.search(done.stderr), f"TensorFlow noise on stderr:\n{done.stderr}"


def test_a_real_native_error_during_the_quiet_import_is_written_back(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tf_runtime, "has_gpu_driver", lambda: False)
    with native_stderr_filtered(is_startup_noise):
        for line in (*NOISE, REAL_ERROR, CUINIT):
            os.write(2, line)
    assert capfd.readouterr().err == REAL_ERROR.decode()


@pytest.mark.parametrize(
    ("line", "gpu_driver", "noise"),
    [
        *[(line, False, True) for line in NOISE],
        (CUINIT, False, True),
        (CUINIT, True, False),  # with a GPU driver loaded, a failed cuInit is a real problem
        (REAL_ERROR, False, False),
        (b"F0000 00:00:1796034050.116203   11280 a.cc:1] fatal\n", False, False),
        (b"Traceback (most recent call last):\n", False, False),
        (b"WARNING:tensorflow:a Python-level warning\n", False, False),
        (b"I0 not absl's format\n", False, False),
    ],
)
def test_startup_noise_is_only_absl_info_warning_and_cuinit_without_a_gpu(
    line: bytes, gpu_driver: bool, noise: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tf_runtime, "has_gpu_driver", lambda: gpu_driver)
    assert is_startup_noise(line) is noise
