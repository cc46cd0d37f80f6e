"""Claim holders judged by their life, not by clocks (phonehome_plugin/state/owner.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait

import psutil
import pytest

from phonehome_plugin.state import owner
from phonehome_plugin.state.owner import LEASE, Sightings

FORK = multiprocessing.get_context("fork")
WAIT = 60.0
"""Seconds to wait for a child's answer: only a hung child takes that long."""


def _reaches(pid: int, status: str) -> None:
    """Wait until process ``pid`` is in ``status`` (a readiness wait: it ends as soon as
    the kernel says so; only a process that never gets there reaches the limit)."""
    deadline = time.monotonic() + WAIT
    while psutil.Process(pid).status() != status:
        assert time.monotonic() < deadline, f"process {pid} never became {status}"
        time.sleep(0.001)


def _hold(pipe: Connection) -> None:
    """A child process that takes a token, says it, and waits to be told to end."""
    pipe.send(owner.register())
    pipe.recv()


@pytest.fixture
def child() -> Iterator[tuple[multiprocessing.process.BaseProcess, Connection, str]]:
    ours, theirs = FORK.Pipe()
    process = FORK.Process(target=_hold, args=(theirs,))
    process.start()
    try:
        assert ours.poll(WAIT), "the child did not answer"
        yield process, ours, ours.recv()
    finally:
        if process.is_alive():
            process.kill()
        process.join(WAIT)


def test_this_machine_is_named_by_its_boot_and_pid_namespace() -> None:
    boot, _, namespace = owner.machine().partition(":")
    assert len(boot) == 36 and namespace == str(os.stat("/proc/self/ns/pid").st_ino)


def test_a_holder_of_this_process_lives_until_it_retires() -> None:
    token = owner.register()
    assert token != owner.register()
    assert owner.alive(token) is True
    owner.retire(token)
    assert owner.alive(token) is False


def test_a_holder_in_another_process_lives_exactly_as_long_as_that_process(
    child: tuple[multiprocessing.process.BaseProcess, Connection, str],
) -> None:
    process, _, token = child
    assert owner.alive(token) is True
    process.kill()
    process.join(WAIT)
    assert owner.alive(token) is False
    # So its claim is taken over at once, whatever the clocks say.
    assert owner.may_take(Sightings(), "startup:x", token, stamp=10**12, now=0.0)


def test_a_live_holder_on_this_machine_is_never_taken_over(
    child: tuple[multiprocessing.process.BaseProcess, Connection, str],
) -> None:
    _, _, token = child
    sightings = Sightings()
    for now in (0.0, LEASE, 10 * 86400.0, 10**9):  # a stall, a frozen process, a jump
        assert not owner.may_take(sightings, "periodic:1", token, stamp=0.0, now=now)


def test_a_pid_reused_by_another_process_is_not_the_holder(
    child: tuple[multiprocessing.process.BaseProcess, Connection, str],
) -> None:
    _, _, token = child
    machine, pid, started, rest = token.split(owner.SEP)
    other_start = owner.SEP.join((machine, pid, repr(float(started) - 1.0), rest))
    assert owner.alive(other_start) is False


@pytest.mark.parametrize(
    "token",
    [
        "another-boot:4026531836/1234/1700000000.0/abcdef",  # another node
        "1234-deadbeef",  # the form of an older version
        f"{owner.machine()}/1/{''}/abcdef",  # a holder whose start time was hidden
    ],
)
def test_a_holder_that_cannot_be_looked_at_is_unknown(token: str) -> None:
    assert owner.alive(token) is None


def test_another_nodes_claim_goes_stale_after_a_lease_on_the_lookers_own_clock() -> None:
    sightings, other_node = Sightings(), "node-b/77/1.0/abc"
    # The holder's stamp says nothing about when: its clock may be minutes off.
    for stamp in (1000.0 + 300, 1000.0 - 300):
        key = f"periodic:{stamp}"
        assert not owner.may_take(sightings, key, other_node, stamp, now=1000.0)  # first seen
        assert not owner.may_take(sightings, key, other_node, stamp, now=1000.0 + LEASE - 1)
        assert owner.may_take(sightings, key, other_node, stamp, now=1000.0 + LEASE)


def test_a_stale_now_never_makes_a_claim_look_older() -> None:
    sightings, other_node = Sightings(), "node-b/77/1.0/abc"
    assert not owner.may_take(sightings, "k", other_node, 5.0, now=10_000.0)
    # Ticks replayed from the past, after a stall: the claim only looks younger.
    for now in (9_000.0, 5_000.0, 0.0):
        assert not owner.may_take(sightings, "k", other_node, 5.0, now=now)
    assert owner.may_take(sightings, "k", other_node, 5.0, now=10_000.0 + LEASE)


def test_a_new_claim_of_the_same_key_starts_a_new_wait() -> None:
    sightings, other_node = Sightings(), "node-b/77/1.0/abc"
    assert not owner.may_take(sightings, "k", other_node, 5.0, now=0.0)
    # The holder claimed again (it is alive and working): the wait starts over.
    assert not owner.may_take(sightings, "k", other_node, 6.0, now=LEASE)
    assert not owner.may_take(sightings, "k", "node-c/1/1.0/x", 6.0, now=2 * LEASE - 1)
    assert owner.may_take(sightings, "k", "node-c/1/1.0/x", 6.0, now=3 * LEASE)
    sightings.forget("k")
    assert not owner.may_take(sightings, "k", "node-c/1/1.0/x", 6.0, now=4 * LEASE)


def test_a_stopped_holder_is_taken_over_and_counts_again_once_it_resumes(
    child: tuple[multiprocessing.process.BaseProcess, Connection, str],
) -> None:
    process, _, token = child
    assert process.pid is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        _reaches(process.pid, psutil.STATUS_STOPPED)  # a signal lands asynchronously
        assert owner.alive(token) is False  # frozen: its claim is taken over
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert owner.alive(token) is True


def test_an_ended_holder_not_yet_reaped_is_gone(
    child: tuple[multiprocessing.process.BaseProcess, Connection, str],
) -> None:
    process, pipe, token = child
    assert process.pid is not None
    pipe.send("end")
    # Ended, not reaped (its sentinel closes at exit; nothing joins it): a zombie
    # keeps its PID and its start time.
    assert wait([process.sentinel], WAIT), "the child did not end"
    _reaches(process.pid, psutil.STATUS_ZOMBIE)  # it may still be on its way out
    assert owner.alive(token) is False
