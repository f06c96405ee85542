"""The lease on a checkpoint prefix: who may take it, when, and what the loser sees."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from service.lease import LEASE, Lease, LeaseHeld, LeaseLost
from service.storage import LocalStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def a_dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "prefix")


def test_the_first_writer_takes_it_and_the_file_says_who(storage: LocalStorage) -> None:
    lease = Lease(storage, ttl_s=30, host="pod-a", pid=7)
    lease.acquire()
    stored = json.loads(storage.read(LEASE))
    assert stored["owner"] == lease.owner and stored["host"] == "pod-a" and stored["pid"] == 7
    assert stored["generation"] == 1 and stored["renewals"] == 0 and not stored["released"]
    lease.renew()
    assert json.loads(storage.read(LEASE))["renewals"] == 1
    assert lease.check().generation == 1


def test_a_live_holder_on_another_host_is_waited_for_a_whole_unrenewed_ttl(
    storage: LocalStorage,
) -> None:
    holder = Lease(storage, ttl_s=30, host="pod-a", pid=7)
    holder.acquire()
    clock = Clock()
    newcomer = Lease(storage, ttl_s=30, host="pod-b", pid=8, clock=clock)
    with pytest.raises(LeaseHeld, match="pod-a"):
        newcomer.acquire()
    clock.now += 29
    with pytest.raises(LeaseHeld):
        newcomer.acquire()
    holder.renew()  # alive: the newcomer's wait starts over
    clock.now += 29
    with pytest.raises(LeaseHeld):
        newcomer.acquire()
    clock.now += 29
    with pytest.raises(LeaseHeld):
        newcomer.acquire()  # it saw the renewal 29 s ago, not a whole TTL
    clock.now += 2
    newcomer.acquire()  # 31 s unrenewed: the holder is gone
    assert json.loads(storage.read(LEASE))["generation"] == 2
    with pytest.raises(LeaseLost, match="pod-b"):
        holder.check()
    with pytest.raises(LeaseLost):
        holder.renew()
    assert not holder.held and newcomer.held


def test_a_released_lease_is_taken_at_once(storage: LocalStorage) -> None:
    holder = Lease(storage, ttl_s=30, host="pod-a", pid=7)
    holder.acquire()
    holder.release()
    assert json.loads(storage.read(LEASE))["released"] is True
    successor = Lease(storage, ttl_s=30, host="pod-b", pid=8, clock=Clock())
    successor.acquire()
    assert json.loads(storage.read(LEASE))["generation"] == 2


def test_on_one_host_a_dead_process_is_taken_over_at_once(
    storage: LocalStorage,
) -> None:
    Lease(storage, ttl_s=30, host="node", pid=a_dead_pid()).acquire()  # killed -9
    restarted = Lease(storage, ttl_s=30, host="node", pid=None, clock=Clock())
    restarted.acquire()
    assert json.loads(storage.read(LEASE))["generation"] == 2


def test_a_container_restarted_in_place_takes_over_at_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "prefix")
    Lease(storage, ttl_s=30, host="box", pid=1).acquire()
    restarted = Lease(storage, ttl_s=30, host="box", pid=1, clock=Clock())  # pid 1 again
    restarted.acquire()
    assert json.loads(storage.read(LEASE))["generation"] == 2
    with pytest.raises(LeaseHeld):  # another host still waits
        Lease(storage, ttl_s=30, host="elsewhere", pid=1, clock=Clock()).acquire()


def test_a_live_process_on_the_same_host_is_refused(storage: LocalStorage) -> None:
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            Lease(storage, ttl_s=30, host="node", pid=other.pid).acquire()
            with pytest.raises(LeaseHeld, match=f"pid {other.pid}"):
                Lease(storage, ttl_s=30, host="node", clock=Clock()).acquire()
        finally:
            other.kill()


def test_an_unreadable_lease_counts_as_none(storage: LocalStorage) -> None:
    storage.write(LEASE, b"{not json")
    lease = Lease(storage, ttl_s=30, host="pod-a", pid=7)
    lease.acquire()
    assert lease.check().generation == 1


@pytest.mark.usefixtures("without_test_switches")
def test_fit_refuses_a_prefix_a_live_trainer_writes(storage: LocalStorage) -> None:
    from service.settings import load_settings
    from service.training.fitting import FitError, fit

    with subprocess.Popen(["sleep", "30"]) as trainer:
        try:
            Lease(storage, ttl_s=30, pid=trainer.pid).acquire()  # this host, alive
            settings = load_settings(checkpoint_dir=str(storage.directory))
            with pytest.raises(FitError, match=f"pid {trainer.pid}"):
                fit(settings, "any-topic", epochs=1, progress=False)
        finally:
            trainer.kill()
