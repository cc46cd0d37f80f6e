"""The ``phonehome`` command: operators see, check, export and erase what telemetry does.

Each subcommand is a thin layer over :mod:`phonehome_plugin.admin`, the same plain
data MaestroHub's admin UI shows: this module parses arguments and prints, nothing
more. Exit codes: 0 done; 1 a problem (one line on stderr names it); 2 wrong usage;
3 nothing to show.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TextIO

from phonehome_plugin import __version__
from phonehome_plugin.admin.locate import (
    DEFAULT_CONFIG,
    DEFAULT_DATA_DIR,
    ENV_CONFIG,
    ProblemError,
    Sources,
)

OK, PROBLEM, USAGE, NOTHING = 0, 1, 2, 3
LABEL = 16
"""Width of the label column of readable output."""
EXIT_CODES = (
    "exit codes: 0 done; 1 a problem (one line on stderr names it); 2 wrong usage; "
    "3 nothing to show"
)
TRIGGERS = ("periodic", "startup", "first_user")


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, stdin: TextIO | None = None
) -> int:
    """Run the command; returns the exit code (never raises for a usage error)."""
    out = out or sys.stdout
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (2), --help and --version (0): a code
        return exit_.code if isinstance(exit_.code, int) else USAGE
    args.stdin = stdin or sys.stdin
    try:
        return int(args.run(args, out))
    except ProblemError as problem:
        print(f"phonehome: {problem}", file=sys.stderr)
        return PROBLEM


# Arguments ----------------------------------------------------------------------------


def _positive(text: str) -> int:
    """An argument that must be a whole number of at least 1."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {number}")
    return number


class _Formatter(argparse.HelpFormatter):
    """Plain-text help that shows each option's default, where it has one worth showing
    (not for flags, nor where the help says what the default is)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default not in (None, False, argparse.SUPPRESS)
            and "%(default)" not in text
            and "default:" not in text
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    formatter = _Formatter
    parser = argparse.ArgumentParser(
        prog="phonehome",
        description="See, check, export and erase what MaestroHub's telemetry does.",
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"phonehome {__version__} (maestrohub-phonehome)"
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    commands: list[tuple[str, Callable[[argparse.Namespace, TextIO], int], str]] = [
        ("status", status, "what the host decided at its start, this shell's view, the state"),
        ("preview", preview, "build the next report now and print its exact bytes"),
        ("history", history, "what was sent, when, with which result; exact bytes and diffs"),
        ("export", export, "write stored reports to a file, for a site with no way out"),
        ("upload", upload, "send an export's reports from a connected machine"),
        ("forget", forget, "erase the local telemetry state (a new installation next start)"),
        ("schema", schema_cmd, "print the report's JSON Schema"),
        ("docs", docs_cmd, "print the telemetry documentation generated from the schema"),
        ("demo", demo, "run a simulated MaestroHub with the plugin, offline"),
    ]
    made = {}
    for name, run, help_text in commands:
        made[name] = cmd = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXIT_CODES,
            formatter_class=formatter,
        )
        cmd.set_defaults(run=run)
        if name in ("status", "preview", "history", "export", "upload", "forget"):
            cmd.add_argument(
                "--config",
                default=None,
                help=f"the host's config.yaml; a file named here must exist (default: "
                f"${ENV_CONFIG} if set, else ./{DEFAULT_CONFIG} if it exists, else none)",
            )
        if name in ("status", "preview", "history", "export", "forget"):
            cmd.add_argument(
                "--data-dir",
                default=DEFAULT_DATA_DIR,
                help="the host's data directory (unused when config.yaml sets state_url)",
            )
        if name in ("status", "preview", "history", "export", "upload"):
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
    made["preview"].add_argument(
        "--trigger", choices=TRIGGERS, default="periodic", help="which report to build"
    )
    made["preview"].add_argument(
        "--pending",
        action="store_true",
        help="print the oldest stored report waiting to be sent instead (exit 3 if none)",
    )
    history_cmd = made["history"]
    history_cmd.add_argument(
        "--limit", type=_positive, default=20, help="how many outcomes to list"
    )
    shown = history_cmd.add_mutually_exclusive_group()
    shown.add_argument(
        "--show",
        metavar="REPORT",
        help="print the exact bytes of one sent report (its sequence number, its "
        "report id, or last), then a newline",
    )
    shown.add_argument(
        "--diff", metavar="REPORT", help="compare one sent report with the one before it"
    )
    made["export"].add_argument(
        "output", help="file to write (JSON Lines, one report a line); - for standard output"
    )
    made["export"].add_argument(
        "--all", action="store_true", help="every stored report, not only those not exported yet"
    )
    made["export"].add_argument(
        "--no-mark", action="store_true", help="do not mark the reports as exported"
    )
    made["export"].add_argument(
        "--manifest",
        help="where to write the manifest (default: OUTPUT.manifest.json; none for -)",
    )
    made["upload"].add_argument("file", help="an export written by phonehome export")
    made["upload"].add_argument(
        "--manifest", help="the export's manifest (default: FILE.manifest.json if it exists)"
    )
    made["upload"].add_argument(
        "--endpoint", help="where to send (default: the config's endpoint)"
    )
    made["forget"].add_argument(
        "--yes", action="store_true", help="erase without asking (for scripts)"
    )
    made["demo"].add_argument(
        "--hours", type=_positive, default=4, help="hours of host time to simulate"
    )
    return parser


def _sources(args: argparse.Namespace) -> Sources:
    return Sources.from_files(args.config, getattr(args, "data_dir", DEFAULT_DATA_DIR))


@contextmanager
def _quiet() -> Iterator[None]:
    """The plugin's own log lines (a store falling back to memory...) kept off the
    terminal while a command writes: the command says in one line what went wrong."""
    logger = logging.getLogger("phonehome_plugin")
    handler = logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _rows(out: TextIO, rows: Mapping[str, Any], indent: str = "  ") -> None:
    """``rows`` as ``  label  value`` lines, the values of one block in one column."""
    width = max([LABEL, *(len(indent) + len(key) + 2 for key in rows)])
    for key, value in rows.items():
        label = f"{indent}{key}"
        print(f"{label:<{width}}{'-' if value is None else value}", file=out)


def _write_bytes(out: TextIO, data: bytes) -> None:
    """``data`` as it is, whatever the terminal's encoding (a body may hold non-ASCII)."""
    binary: IO[bytes] | None = getattr(out, "buffer", None)
    if binary is not None:
        out.flush()
        binary.write(data)
        binary.flush()
    else:
        out.write(data.decode("utf-8"))


# status -------------------------------------------------------------------------------


def status(args: argparse.Namespace, out: TextIO) -> int:
    from phonehome_plugin.admin.status import status as collect

    info = collect(_sources(args))
    if args.json:
        print(json.dumps(info, indent=2), file=out)
    else:
        _print_status(info, out)
    if info["problems"]:
        # What could be told is on stdout; stderr and the exit code flag the problem.
        raise ProblemError("; ".join(info["problems"]))
    return OK


def _print_status(info: Mapping[str, Any], out: TextIO) -> None:
    host, state, shell = info["host"], info["state"], info["shell"]
    if host is None:
        print("The host", file=out)
        _rows(out, {"telemetry": "unknown", "note": info["host_note"]})
    else:
        print(f"The host, as it recorded its start at {host['recorded_at']}", file=out)
        endpoint = host["endpoint"]
        if host["mode"] != "send":
            endpoint = f"{endpoint} (not used in mode {host['mode']})"
        _rows(
            out,
            {
                "telemetry": host["telemetry"],
                "decided by": _decided_by(host["switch"], host["source"]),
                "reason": host["reason"],
                "mode": host["mode"],
                "endpoint": endpoint,
                "interval": f"{host['interval']} s",
                "config file": host["config_file"] or "none (the host named no file)",
                "data dir": host["data_dir"],
                "state": host["state"],
                "MaestroHub": f"{host['version'] or '?'} {host['edition'] or ''}".strip(),
                "note": info["host_note"],
            },
        )
    print(f"The installation's state ({state['where']})", file=out)
    if not state["found"]:
        _rows(out, {"state": state.get("problem") or state.get("note")})
    else:
        mode = host["mode"] if host else None
        next_periodic = state["next_periodic"]
        if next_periodic is not None and mode is not None:
            next_periodic += {
                "send": " (built and sent then)",
                "log": " (built and logged then, not sent)",
                "offline": " (built then and kept for export, not sent)",
            }.get(mode, "")
        rows = {
            "instance id": state["instance_id"],
            "last report": state["last_report"],
            "outbox": state["outbox"],
            "not exported": state["not_exported"] if mode == "offline" else None,
            "kept bodies": state["kept_bodies"],
            "next periodic": next_periodic,
            "failures": state["failures"],
            "next retry": state["next_retry"],
            "last built": state["last_built"],
        }
        if mode != "offline":
            rows.pop("not exported")
        _rows(out, rows)
    for process in info.get("waiting", []):
        print(
            f"Process {process['pid']} of this node waits for the installation's state "
            f"since {process['since']}: it counts, and reports nothing until it reaches "
            f"it ({process['why']})",
            file=out,
        )
    file = shell["config_file"]
    read = f"config file {file}" if shell["config_found"] else f"no config file ({file} not found)"
    print(f"This shell's view (this shell's environment, {read})", file=out)
    _rows(out, {"telemetry": shell["telemetry"], "reason": shell["reason"]})
    listed = host["settings"] if host else shell["settings"]
    if listed:
        whose = "as the host recorded them" if host else "from this shell's config"
        print(f"Settings ({whose})", file=out)
        _rows(out, listed)


def _decided_by(switch: str, source: str) -> str:
    if switch == "default":
        return "nothing turned it off (on by default)"
    return f"{switch} ({source})"


# preview ------------------------------------------------------------------------------


def preview(args: argparse.Namespace, out: TextIO) -> int:
    sources = _sources(args)
    if args.pending:
        return _pending(sources, out)
    from phonehome_plugin.admin.preview import preview as build

    made = build(sources, args.trigger)
    if args.json:
        shown = {
            "report": made.report,
            "notes": made.notes,
            "pending": made.pending,
            "schema_errors": made.schema_errors,
        }
        print(json.dumps(shown, indent=2, ensure_ascii=False), file=out)
    else:
        _write_bytes(out, made.body + b"\n")
        for note in made.notes:
            print(f"phonehome: note: {note}", file=sys.stderr)
    if made.schema_errors:
        raise ProblemError(
            "this report fails its schema, so the plugin would not send it: "
            + "; ".join(made.schema_errors[:3])
        )
    return OK


def _pending(sources: Sources, out: TextIO) -> int:
    from phonehome_plugin.state.outbox import Outbox

    waiting = sources.read(lambda store: Outbox(store, sources.settings().outbox).pending())
    if not waiting:
        print("phonehome: no stored report is waiting to be sent", file=sys.stderr)
        return NOTHING
    _write_bytes(out, waiting[0].body + b"\n")
    return OK


# history ------------------------------------------------------------------------------


def history(args: argparse.Namespace, out: TextIO) -> int:
    from phonehome_plugin.admin import sent

    sources = _sources(args)
    if args.show is not None:
        _write_bytes(out, sent.report(sources, args.show).body + b"\n")
        return OK
    if args.diff is not None:
        return _diff(sources, args.diff, args.json, out)
    events = sent.events(sources, args.limit)
    if args.json:
        print(json.dumps(events, indent=2), file=out)
        return OK
    for event in events:
        line = f"#{event['sequence']} {event['trigger']} at {event['at']}: "
        line += f"{event['result']} ({event['detail']})"
        if event["sha256"]:
            line += f" [sha256 {event['sha256'][:16]}, {event['bytes']} bytes]"
        print(line, file=out)
    if not events:
        print("nothing sent yet", file=out)
    return OK


def _diff(sources: Sources, ref: str, as_json: bool, out: TextIO) -> int:
    from phonehome_plugin.admin import sent

    after, before, changes = sent.diff(sources, ref)
    if as_json:
        shown = {
            "report": after.sequence,
            "previous": None if before is None else before.sequence,
            "changes": [change.as_dict() for change in changes],
        }
        print(json.dumps(shown, indent=2, ensure_ascii=False), file=out)
        return OK
    against = "no earlier kept report" if before is None else f"#{before.sequence}"
    print(f"report #{after.sequence} ({after.trigger}) against {against}:", file=out)
    for change in changes:
        print(change.line(), file=out)
    return OK


# export, upload, forget ---------------------------------------------------------------


def export(args: argparse.Namespace, out: TextIO) -> int:
    from phonehome_plugin.admin.export import STDOUT
    from phonehome_plugin.admin.export import export as write

    binary: IO[bytes] | None = getattr(out, "buffer", None)
    if args.output == STDOUT and binary is None:
        raise ProblemError("standard output takes no bytes here")
    with _quiet():
        done = write(
            _sources(args),
            args.output,
            binary,
            everything=args.all,
            mark=not args.no_mark,
            manifest=args.manifest,
        )
    summary = {
        "exported": len(done.reports),
        "file": done.target,
        "manifest": done.manifest,
        "marked": done.marked,
    }
    said = sys.stderr if args.output == STDOUT else out  # stdout holds the reports
    if args.json:
        print(json.dumps(summary), file=said)
    elif done.reports:
        where = "standard output" if args.output == STDOUT else done.target
        extra = f", manifest {done.manifest}" if done.manifest else ""
        marked = "; marked as exported" if done.marked else ""
        print(f"exported {len(done.reports)} report(s) to {where}{extra}{marked}", file=said)
    else:
        print("nothing new to export (--all writes every stored report again)", file=said)
    return OK


def upload(args: argparse.Namespace, out: TextIO) -> int:
    from phonehome_plugin.admin.upload import upload as send
    from phonehome_plugin.config.settings import ConfigError, parse, section_of
    from phonehome_plugin.config.switch import resolve

    sources = _sources(args)
    config = dict(sources.config)
    if args.endpoint:
        section = {**section_of(config), "endpoint": args.endpoint}
        config = {**config, "modules": {**(config.get("modules") or {}), "phonehome": section}}
    decision = resolve(config, sources.environ)
    if decision.config_error is not None:
        raise sources.invalid(decision.config_error)
    if not decision.on:
        raise ProblemError(f"not uploaded: telemetry is {decision.reason}")
    try:
        settings = parse(section_of(config))
    except ConfigError as error:  # resolve parsed it already; kept for the types
        raise sources.invalid(str(error)) from error
    done = send(Path(args.file), settings, Path(args.manifest) if args.manifest else None)
    if args.json:
        print(json.dumps([item.as_dict() for item in done], indent=2), file=out)
    else:
        for item in done:
            print(
                f"line {item.line}: #{item.sequence} {item.trigger} {item.report_id}: "
                f"{item.result} ({item.detail})",
                file=out,
            )
    failed = [item for item in done if item.result != "sent"]
    if not args.json:
        print(f"{len(done) - len(failed)} of {len(done)} report(s) delivered", file=out)
    if failed:
        raise ProblemError(f"{len(failed)} report(s) not delivered (see above)")
    return OK


def forget(args: argparse.Namespace, out: TextIO) -> int:
    from phonehome_plugin.admin import forget as erasing

    sources = _sources(args)
    found = erasing.survey(sources)
    if found is None:
        print(f"no telemetry state at {sources.where()}: nothing to forget", file=out)
        return OK
    print(f"This erases the telemetry state at {found.where}:", file=out)
    _rows(
        out,
        {
            "instance id": found.instance_id,
            "first email": "kept" if found.first_email_kept else "none",
            "outbox": f"{found.outbox_reports} report(s)",
            "history": f"{found.history_events} outcome(s), {found.kept_bodies} kept bodies",
        },
    )
    print(
        "The next start with telemetry on is a new installation. Stop MaestroHub first.", file=out
    )
    if not args.yes:
        print("Erase it? Type yes to confirm: ", end="", file=out, flush=True)
        answer = args.stdin.readline().strip().lower()
        if answer not in ("yes", "y"):
            raise ProblemError("nothing erased: not confirmed")
    with _quiet():
        erasing.forget(sources)
    print("erased", file=out)
    return OK


# schema, docs, demo -------------------------------------------------------------------


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


if __name__ == "__main__":
    raise SystemExit(main())
