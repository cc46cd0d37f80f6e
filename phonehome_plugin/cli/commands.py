"""The ``phonehome`` command: operators see, verify and export what telemetry does.

Exit codes: 0 done; 1 a problem with config.yaml, the data dir or the state
file (one line on stderr names it); 2 wrong usage; 3 nothing to show (no
pending report for ``preview``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from phonehome_plugin.config import switch

if TYPE_CHECKING:
    from phonehome_plugin.state.history import Event
    from phonehome_plugin.state.outbox import Outbox
    from phonehome_plugin.state.store import Store

OK, PROBLEM, USAGE, NOTHING = 0, 1, 2, 3
DEFAULT_CONFIG = "config.yaml"
DEFAULT_DATA_DIR = "~/maestrohub/data"
LINE_MAX = 200
"""Characters of a YAML parse error quoted on stderr, at most."""
EXIT_CODES = (
    "exit codes: 0 done; 1 a problem with config.yaml, the data dir or the state file "
    "(one line on stderr names it); 2 wrong usage; 3 nothing to show"
)
T = TypeVar("T")


class ProblemError(Exception):
    """An operator-facing error: printed as one line, exit code 1."""


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command; returns the exit code."""
    out = out or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (2) and --help (0): a code, not an exception
        return exit_.code if isinstance(exit_.code, int) else USAGE
    try:
        return int(args.run(args, out))
    except ProblemError as problem:
        print(f"phonehome: {problem}", file=sys.stderr)
        return PROBLEM


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phonehome", description=__doc__.split("\n")[0], epilog=EXIT_CODES
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    commands: list[tuple[str, Callable[..., int], str]] = [
        (
            "status",
            status,
            "on or off and why, mode, instance id, endpoint, last send, outbox, next report",
        ),
        ("preview", preview, "print the exact body of the next report to be sent"),
        ("history", history, "what was sent, when, with which result"),
        ("export", export, "write pending reports to a file for upload by hand"),
        ("schema", schema_cmd, "print the report's JSON Schema"),
        ("docs", docs_cmd, "print the telemetry documentation generated from the schema"),
        ("demo", demo, "run a simulated MaestroHub with the plugin, offline"),
    ]
    for name, run, help_text in commands:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(run=run)
        if name in ("status", "preview", "history", "export"):
            cmd.add_argument(
                "--config",
                default=os.environ.get("MAESTROHUB_CONFIG", DEFAULT_CONFIG),
                help="the host's config.yaml (default: ./config.yaml or $MAESTROHUB_CONFIG)",
            )
            cmd.add_argument(
                "--data-dir", default=DEFAULT_DATA_DIR, help="the host's data directory"
            )
        if name in ("status", "history", "export"):
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
    sub.choices["history"].add_argument("--limit", type=int, default=20)
    sub.choices["export"].add_argument(
        "output", help="file to write (JSON Lines, one report a line)"
    )
    sub.choices["demo"].add_argument("--hours", type=int, default=4)
    return parser


def load_config(path: str) -> Mapping[str, Any]:
    """The parsed config.yaml; a missing file is an empty config (all defaults).

    Only ``yaml.safe_load`` walks the parsed file (a YAML alias bomb parses in
    milliseconds into a small graph of shared lists); what is done with it
    afterwards is bounded (see :mod:`.settings`), and a parse error is quoted up
    to :data:`LINE_MAX` characters.
    """
    import yaml

    file = Path(path).expanduser()
    if not file.exists():
        return {}
    try:
        loaded = yaml.safe_load(file.read_text("utf-8"))
    except RecursionError as error:  # PyYAML composes nested collections recursively
        raise ProblemError(f"cannot read {file}: nested too deeply") from error
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        # The first line only, cut: PyYAML quotes what it choked on (an alias name
        # may be as long as the file), and the error is one line on stderr.
        first = (str(error).splitlines() or [type(error).__name__])[0][:LINE_MAX]
        raise ProblemError(f"cannot read {file}: {first}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ProblemError(f"{file}: expected a mapping at the top level")
    return loaded


def _open(args: argparse.Namespace) -> Store:
    """The installation's store, opened read-only: nothing is created, written or
    locked beyond one read at a time; no state to read raises a ``NoStateError``."""
    from phonehome_plugin.state.backends import open_store

    return open_store(Path(args.data_dir).expanduser(), _state_url(args), read_only=True)


def _read(args: argparse.Namespace, query: Callable[[Store], T]) -> T:
    """Run ``query(store)`` on the installation's state; any failure to read it is a
    :class:`ProblemError`."""
    from phonehome_plugin.state.store import NoStateError

    try:
        store = _open(args)
        try:
            return query(store)
        finally:
            store.close()
    except NoStateError as error:
        raise ProblemError(str(error)) from error


def _outbox(store: Store) -> Outbox:
    from phonehome_plugin.config.settings import OutboxLimits
    from phonehome_plugin.state.outbox import Outbox

    return Outbox(store, OutboxLimits())  # the limits bound writes only: none happen here


def status(args: argparse.Namespace, out: TextIO) -> int:
    decision = switch.resolve(load_config(args.config))
    if decision.config_error is not None:
        # As for a config.yaml that does not parse: one line on stderr, exit 1.
        raise _invalid(args, decision.config_error)
    settings = decision.settings
    info: dict[str, Any] = {
        "telemetry": "on" if decision.on else "off",
        "reason": decision.reason,
        "mode": settings.mode if settings else None,
        "endpoint": switch.without_credentials(settings.endpoint) if settings else None,
    }
    state, broken = _state_status(args, settings.interval if settings else 3600)
    info.update(state)
    if args.json:
        print(json.dumps(info, indent=2), file=out)
    else:
        for key, value in info.items():
            print(f"{key.replace('_', ' '):<14}{'-' if value is None else value}", file=out)
    if broken is not None:
        # What could be told is on stdout; the exit code and stderr flag the broken file.
        raise ProblemError(broken)
    return OK


def _state_status(args: argparse.Namespace, interval: int) -> tuple[dict[str, Any], str | None]:
    """The state file's part of ``status``, and the problem when there is one.

    A missing state file is no problem (telemetry never ran, or is off); a
    missing data dir (a wrong ``--data-dir``) or a broken state file is.
    """
    from phonehome_plugin.state import history
    from phonehome_plugin.state.store import BrokenStateError, NoDataDirError, NoStateError

    try:
        store = _open(args)
        try:
            outbox = _outbox(store)
            count, size = outbox.size()
            last = history.recent(store, 1)
            return {
                "instance_id": store.get("instance_id"),
                "last_report": _describe_event(_event(last[0])) if last else None,
                "outbox": f"{count} report(s), {size} bytes",
                "next_periodic": _next_periodic(store, interval),
                **_delivery_status(store, outbox),
            }, None
        finally:
            store.close()
    except (BrokenStateError, NoDataDirError) as error:
        return {"instance_id": None, "state": str(error)}, str(error)
    except NoStateError as error:
        return {"instance_id": None, "state": str(error)}, None


def _state_url(args: argparse.Namespace) -> str | None:
    """``modules.phonehome.state_url`` from config.yaml, if it is set.

    An invalid section is a :class:`ProblemError`: with it the plugin is inert,
    and where it keeps its state cannot be known.
    """
    from phonehome_plugin.config.settings import ConfigError, parse, section_of

    try:
        return parse(section_of(load_config(args.config))).state_url
    except ConfigError as error:
        raise _invalid(args, str(error)) from error


def _invalid(args: argparse.Namespace, error: str) -> ProblemError:
    """The one line for an invalid ``modules.phonehome`` (``error`` is bounded, see .config)."""
    return ProblemError(f"{Path(args.config).expanduser()}: {error}; telemetry is off")


def _next_periodic(store: Store, interval: int) -> str | None:
    """When the plugin builds its next periodic report (host clock), if it can be known."""
    from phonehome_plugin.reports import schedule, triggers

    instance_id, last = store.get("instance_id"), store.get(triggers.LAST_SLOT)
    if instance_id is None or last is None or not last.lstrip("-").isdigit():
        return None
    return stamp(schedule.periodic_due_at(int(last), instance_id, interval))


def _delivery_status(store: Store, outbox: Outbox) -> dict[str, Any]:
    """Whether sending is held back after failures, and until when (host clock)."""
    from phonehome_plugin.state.outbox import FAILURES_KEY

    failures = int(store.get(FAILURES_KEY) or 0)
    not_before = outbox.gate()
    return {
        "failures": f"{failures} failed send series in a row" if failures else None,
        "next_retry": stamp(not_before) if failures and not_before else None,
    }


def _event(event: Event) -> dict[str, Any]:
    """``event`` as shown: its fields, the time in ISO 8601."""
    return {**dataclasses.asdict(event), "at": stamp(event.at)}


def stamp(epoch: float) -> str:
    """Host-clock epoch seconds as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _describe_event(event: Mapping[str, Any]) -> str:
    head = f"#{event['sequence']} {event['trigger']} at {event['at']}"
    return f"{head}: {event['result']} ({event['detail']})"


def preview(args: argparse.Namespace, out: TextIO) -> int:
    pending = _read(args, lambda store: _outbox(store).pending())
    if not pending:
        print(
            "phonehome: no report is waiting to be sent; the next one is built when due",
            file=sys.stderr,
        )
        return NOTHING
    body = pending[0].body + b"\n"
    binary = getattr(out, "buffer", None)
    if binary is not None:
        # The exact bytes, whatever the terminal's encoding (a body may hold non-ASCII).
        out.flush()
        binary.write(body)
        binary.flush()
    else:
        out.write(body.decode("utf-8"))
    return OK


def history(args: argparse.Namespace, out: TextIO) -> int:
    from phonehome_plugin.state import history as recorded

    events = _read(args, lambda store: [_event(e) for e in recorded.recent(store, args.limit)])
    if args.json:
        print(json.dumps(events, indent=2), file=out)
        return OK
    for event in events:
        print(_describe_event(event), file=out)
    if not events:
        print("nothing sent yet", file=out)
    return OK


def export(args: argparse.Namespace, out: TextIO) -> int:
    pending = _read(args, lambda store: _outbox(store).pending())
    target = Path(args.output)
    try:
        with target.open("wb") as file:
            for entry in pending:
                file.write(entry.body + b"\n")
    except OSError as error:
        raise ProblemError(f"cannot write {target}: {error.strerror}") from error
    summary = {"exported": len(pending), "file": str(target)}
    print(
        json.dumps(summary) if args.json else f"exported {len(pending)} report(s) to {target}",
        file=out,
    )
    return OK


def schema_cmd(args: argparse.Namespace, out: TextIO) -> int:
    from phonehome_plugin.reports import schema

    out.write(schema.text())
    return OK


def docs_cmd(args: argparse.Namespace, out: TextIO) -> int:
    from phonehome_plugin.cli import telemetry_doc

    out.write(telemetry_doc.render())
    return OK


def demo(args: argparse.Namespace, out: TextIO) -> int:
    from phonehome_plugin.testing.demo import run_demo

    return run_demo(out, hours=args.hours)
