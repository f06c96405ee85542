"""Unit-test helpers: fake Kafka records and an environment free of STREAMFIT_ settings."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest


def make_record(
    value: bytes | None,
    key: bytes | None = b"1",
    offset: int = 0,
    topic: str = "t",
    partition: int = 0,
) -> Any:
    """What the codec reads of an aiokafka ConsumerRecord."""
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key, value=value)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Remove every STREAMFIT_* variable so settings see only what a test sets."""
    for name in list(os.environ):
        if name.startswith("STREAMFIT_"):
            monkeypatch.delenv(name)
    return monkeypatch
