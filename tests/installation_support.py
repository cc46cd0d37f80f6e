"""One installation as real processes: each a simulated MaestroHub host start (SimHost)
with the real plugin, driven by the test over a pipe, sharing one state.

Every process is forked before it does anything, and does only what it is told:
tick to a moment of the installation's timeline (its own clock may run ahead or
behind by a fixed offset), make a change (whose signal, as in a real multi-process
host, is sent in that process only), run executions, stop. Commands are sent and
answered separately, so a test can leave a process inside a step (held at a gate)
and kill, freeze or cut it off there.

The host's own database (users, connections, pipelines...) is :attr:`Installation.db`:
every change a process makes is merged into it, and a process started later (a
replacement for a killed one) starts from it, as a real replacement worker would
sync the host's database at its start.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import multiprocessing
import os
import signal
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from phonehome_plugin.plugin import RUNTIME_NAME
from phonehome_plugin.testing.simclock import SimClock
from phonehome_plugin.testing.simhost import SimHost, SimState

FORK = multiprocessing.get_context("fork")
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
STATUSES = {"completed": 6, "failed": 2, "completed_with_errors": 1, "cancelled": 1}
REPLY_WAIT = 120.0
"""Seconds to wait for an answer: only a hung or dead process takes that long."""
IDLE_WAIT = 120.0
"""Seconds a process waits for its plugin to have handled a command."""


@dataclass(frozen=True)
class Spec:
    """What one process is: its name (also its database ``application_name``), its
    node's data dir and host start, how far its clock is off, and its config."""

    name: str
    data_dir: Path
    started_at: datetime
    config: Mapping[str, Any]
    clock_offset: float = 0.0
    ids_from: int = 0
    """Where the ids of what this process creates begin: ids never collide."""


def _serve(spec: Spec, db: SimState, commands: Connection) -> None:
    """One process of the installation: a host start that does what it is told."""
    # Its log lines, named: a failing case's captured output tells the processes apart.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[{spec.name}] %(levelname)s %(message)s"))
    logging.getLogger("phonehome_plugin").addHandler(handler)
    offset = timedelta(seconds=spec.clock_offset)
    clock = SimClock(START + offset)
    db.last_id = max(db.last_id, spec.ids_from)
    host = SimHost(spec.config, spec.data_dir, clock=clock, started_at=spec.started_at, state=db)
    host.start()
    runtime: Any = host.app.plugin_manager.get_plugin(RUNTIME_NAME)

    def idle() -> bool:
        return runtime is None or bool(runtime.worker.wait_idle(IDLE_WAIT))

    while True:
        command, argument = commands.recv()
        if command == "at":  # a moment of the installation's timeline, epoch seconds
            when = datetime.fromtimestamp(argument, UTC) + offset
            host.tick_at(max(when, clock.now()))
            commands.send(idle())
        elif command == "call":
            name, args = argument
            getattr(host, name)(*args)
            commands.send((idle(), copy.deepcopy(host.state.modules)))
        elif command == "executions":
            emitted = host.run_executions(argument, STATUSES, threads=2)
            commands.send(dict(emitted))
        elif command == "stop":
            host.shutdown()
            commands.send(True)
            return


@dataclass
class Member:
    """One running process of the installation."""

    spec: Spec
    process: Any
    commands: Connection
    executions: Counter[str] = field(default_factory=Counter)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def send(self, command: str, argument: Any = None) -> None:
        self.commands.send((command, argument))

    def reply(self, wait: float = REPLY_WAIT) -> Any:
        assert self.commands.poll(wait), f"process {self.spec.name} hung or died"
        return self.commands.recv()

    def kill(self) -> None:
        """SIGKILL, wherever it is; reaped before this returns."""
        os.kill(self.pid, signal.SIGKILL)
        self.process.join(REPLY_WAIT)
        assert self.process.exitcode == -signal.SIGKILL

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


class Installation:
    """Processes of one installation, started from their :class:`Spec`."""

    def __init__(self, specs: list[Spec], db: SimState | None = None) -> None:
        self.db = db or SimState()
        self.members: list[Member] = []
        self.killed: list[Member] = []
        self.now = START.timestamp()
        self.launched = 0
        for spec in specs:
            self.members.append(self._launch(spec))

    def _launch(self, spec: Spec) -> Member:
        self.launched += 1
        spec = dataclasses.replace(spec, ids_from=self.launched * 1_000_000)
        ours, theirs = FORK.Pipe()
        process = FORK.Process(target=_serve, args=(spec, copy.deepcopy(self.db), theirs))
        process.start()
        return Member(spec, process, ours)

    def member(self, name: str) -> Member:
        [found] = [m for m in self.members if m.spec.name == name]
        return found

    def tick(self, seconds: float = 0.0, only: Callable[[Member], bool] = lambda m: True) -> None:
        """Move the timeline by ``seconds`` and tick every (chosen) process there."""
        self.now += seconds
        chosen = [m for m in self.members if only(m)]
        for member in chosen:
            member.send("at", self.now)
        for member in chosen:
            assert member.reply(), f"{member.spec.name}: its plugin did not settle"

    def call(self, member: Member, name: str, *args: Any) -> None:
        """A change made in ``member`` only; merged into the host's database."""
        member.send("call", (name, args))
        self.merge(member.reply())

    def merge(self, answer: tuple[bool, Mapping[str, dict[str, Any]]]) -> None:
        settled, modules = answer
        assert settled, "a process's plugin did not settle"
        for module, records in modules.items():
            self.db.modules[module].update(records)

    def executions(self, n: int) -> None:
        """``n`` executions in every process (more in later ones)."""
        for index, member in enumerate(self.members):
            member.send("executions", n * (index + 1))
        for member in self.members:
            member.executions.update(member.reply())

    def replace(self, member: Member) -> Member:
        """A new process in place of ``member`` (killed): the same node and host start,
        started from the host's database, as a replacement worker is."""
        self.killed.append(member)
        fresh = self._launch(member.spec)
        self.members[self.members.index(member)] = fresh
        return fresh

    def emitted(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for member in [*self.members, *self.killed]:
            total.update(member.executions)
        return total

    def stop(self) -> None:
        for member in self.members:
            if member.process.is_alive():
                with contextlib.suppress(OSError, EOFError):
                    member.thaw()
                    member.send("stop")
        for member in self.members:
            with contextlib.suppress(OSError, EOFError):
                if member.commands.poll(REPLY_WAIT):
                    member.commands.recv()
            member.process.join(30)
            if member.process.is_alive():
                member.process.kill()
                member.process.join(10)
