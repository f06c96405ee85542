"""Disk faults: the checkpoint directory stops taking writes, then heals.

While checkpoints cannot be written the service keeps serving and learning, commits no
offsets (a commit may only follow a checkpoint that holds them), counts the failures in
`streamfit_checkpoint_failures_total`, logs one clear ERROR line per failure and leaves no
partial file behind. A kill -9 during the fault loses nothing: the restart resumes from the
last checkpoint that was written. Once the directory heals, checkpoints and commits resume
and the count is exact.

Tests run as root here, where chmod does not stop writes: the directory is made immutable
(`chattr +i`) instead, which stops root too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.reliability.probes import (
    StaleError,
    assert_checkpoints_intact,
    group_committed,
    metric,
    newest_manifest_entry,
)
from tests.support import ServiceProcess, produce_synthetic, wait_for


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make `directory` refuse new files, for root too; skip the test if that is impossible."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        undo = ["chmod", oct(mode & 0o7777)[2:], str(directory)]
    else:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(directory)]).returncode != 0:
            pytest.skip("cannot make a directory read-only for root (no chattr +i here)")
        undo = [chattr, "-i", str(directory)]
    try:
        probe = directory / ".probe"
        try:
            probe.write_bytes(b"x")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip(f"{directory} still takes writes")
        yield
    finally:
        subprocess.run(undo, check=True)


def _committed(service: ServiceProcess) -> list[int | None]:
    env = service.env
    return group_committed(
        env["STREAMFIT_KAFKA_BOOTSTRAP"], env["STREAMFIT_GROUP_ID"], env["STREAMFIT_TRAIN_TOPIC"], 3
    )


def _failures(service: ServiceProcess) -> float:
    return metric(service.get_text("/metrics"), "streamfit_checkpoint_failures_total") or 0.0


def _error_lines(service: ServiceProcess) -> list[dict]:
    lines = []
    for line in service.logs().splitlines():
        if line.startswith("{") and '"checkpoint failed' in line:
            lines.append(json.loads(line))
    return lines


def test_read_only_checkpoint_directory(broker, topic, spawn, tmp_path):
    settings = {"checkpoint_interval_s": 0.5, "batch_size": 64}
    directory = tmp_path / "a"
    produce_synthetic(broker.bootstrap, topic, rows=1500, partitions=3)
    service = spawn(**settings).start()
    service.wait_trained(1500)
    wait_for(lambda: _committed(service) == [500] * 3, 30, what="first commits")
    version_before = service.get("/model")["checkpoint"]["version"]

    with read_only(directory):
        produce_synthetic(broker.bootstrap, topic, rows=900, partitions=3, seed=1)
        service.wait_trained(2400)  # learning goes on
        wait_for(lambda: _failures(service) >= 2, 30, what="checkpoint failures counted")
        errors = _error_lines(service)
        assert errors and all(e["level"] == "ERROR" for e in errors), errors
        assert "offsets not committed" in errors[0]["message"] and errors[0]["error"]
        assert _committed(service) == [500] * 3, "no commit without a checkpoint"
        status, ready = service.request("GET", "/readyz")
        assert status == 200, ready
        assert "checkpoint failed" in (ready["trainer"]["last_error"] or ""), ready
        predict = service.request("POST", "/v1/models/susy:predict", {"instances": [[0.1] * 18]})
        assert predict[0] == 200
        assert service.get("/model")["checkpoint"]["version"] == version_before
        assert_checkpoints_intact(directory)

        # kill -9 while nothing can be saved: the restart learns the 900 records again.
        service.kill()
        service = spawn(**settings).start()
        assert service.get("/model")["samples_trained"] == 1500
        service.wait_trained(2400)
        wait_for(lambda: _failures(service) >= 1, 30, what="failures after the restart")
        assert _committed(service) == [500] * 3

    wait_for(lambda: _committed(service) == [800] * 3, 30, what="commits after the disk healed")
    model = service.get("/model")
    assert model["samples_trained"] == 2400
    assert model["checkpoint"]["version"] > version_before
    assert sum(model["checkpoint"]["offsets"].values()) == 2400
    assert newest_manifest_entry(directory)["samples_trained"] == 2400
    assert_checkpoints_intact(directory)

    wait_for(lambda: service.get("/model")["version"] == model["checkpoint"]["version"], 10)
    last_error = service.get("/readyz")["trainer"]["last_error"]
    if last_error:
        raise StaleError(f"/readyz still says {last_error!r} after checkpoints resumed")
