"""``phonehome upload``: an export's reports sent from a machine that can reach the endpoint.

Each line of the file goes through the plugin's own delivery code: one send series of
:mod:`.delivery.retry` over :class:`.delivery.transport.Transport` (the endpoint,
proxy and CA bundle of the config, TLS always verified, gzip above 1 KiB), with the
report's own ``report_id`` as its ``Idempotency-Key``. The receiver keeps a report
once however often it arrives, so uploading a file twice, or a report the host also
sent, duplicates nothing.

Before anything is sent, every line is checked: against the manifest beside the file
(its sha256; a file with a manifest must match it line for line) and against the
report's JSON Schema, as the plugin checks every report it stores. A line that fails
is refused and not sent. Nothing is written anywhere: the connected machine keeps no
telemetry state.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from phonehome_plugin.admin.export import FORMAT, manifest_of
from phonehome_plugin.admin.locate import ProblemError
from phonehome_plugin.config.settings import Settings
from phonehome_plugin.delivery import retry
from phonehome_plugin.delivery.retry import RetryPolicy
from phonehome_plugin.delivery.transport import Transport
from phonehome_plugin.reports import schema
from phonehome_plugin.state.history import digest


@dataclass(frozen=True)
class Uploaded:
    """What came of one line: ``result`` is ``sent`` (the receiver has it, now or from
    before), ``rejected`` (a final answer), ``failed`` (try again later) or ``refused``
    (not sent: it failed a check here)."""

    line: int
    report_id: str | None
    sequence: int | None
    trigger: str | None
    result: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def upload(
    path: Path,
    settings: Settings,
    manifest: Path | None = None,
    policy: RetryPolicy | None = None,
    cancel: threading.Event | None = None,
) -> list[Uploaded]:
    """Send every report of the export at ``path`` to ``settings.endpoint``.

    ``manifest``: the manifest to check against (default: the one beside the file,
    if it exists; a named one must exist).
    """
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise ProblemError(f"cannot read {path}: {error.strerror or error}") from error
    expected = _manifest(manifest or manifest_of(path), named=manifest is not None)
    reports = len([line for line in lines if line.strip()])
    if expected is not None and len(expected) != reports:
        raise ProblemError(
            f"{path} holds {reports} report(s) where its manifest lists {len(expected)}"
        )
    transport = Transport(settings)
    stop = cancel or threading.Event()
    done: list[Uploaded] = []
    try:
        number = 0
        for body in lines:
            if not body.strip():
                continue
            number += 1
            checked = _check(number, body, expected)
            if isinstance(checked, Uploaded):
                done.append(checked)
                continue
            done.append(_send(number, body, checked, transport, policy or _policy(settings), stop))
    finally:
        transport.close()
    return done


def _policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(deadline=settings.timeout)


def _check(number: int, body: bytes, expected: list[str] | None) -> dict[str, Any] | Uploaded:
    """The report on line ``number``, or why it is refused."""
    try:
        report = json.loads(body)
    except ValueError:
        return Uploaded(number, None, None, None, "refused", "not JSON")
    if not isinstance(report, dict) or not isinstance(report.get("report_id"), str):
        return Uploaded(number, None, None, None, "refused", "not a report")
    report_id, sequence, trigger = (
        report["report_id"],
        report.get("sequence"),
        report.get("trigger"),
    )
    seq = sequence if isinstance(sequence, int) else None
    kind = trigger if isinstance(trigger, str) else None
    if expected is not None and digest(body) != expected[number - 1]:
        return Uploaded(
            number, report_id, seq, kind, "refused", "sha256 differs from the manifest"
        )
    problems = schema.errors(report)
    if problems:
        return Uploaded(
            number, report_id, seq, kind, "refused", f"fails the schema: {problems[0]}"
        )
    return report


def _send(
    number: int,
    body: bytes,
    report: dict[str, Any],
    transport: Transport,
    policy: RetryPolicy,
    cancel: threading.Event,
) -> Uploaded:
    report_id = str(report["report_id"])

    def post(time_left: float) -> Any:
        return transport.post(body, report_id, time_left, cancel)

    answer = retry.send_series(post, policy, cancel).answer
    verdict = retry.verdict(answer)
    result = {"sent": "sent", "rejected": "rejected"}.get(verdict, "failed")
    return Uploaded(
        number, report_id, report.get("sequence"), report.get("trigger"), result, answer.describe()
    )


def _manifest(path: Path, named: bool) -> list[str] | None:
    """The sha256 of each report the manifest at ``path`` lists, in order; None when
    there is none (and none was named)."""
    if not path.exists():
        if named:
            raise ProblemError(f"manifest {path} does not exist")
        return None
    try:
        document = json.loads(path.read_bytes())
        if document.get("format") != FORMAT:
            raise ValueError("not a manifest of a phonehome export")
        return [str(row["sha256"]) for row in document["reports"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ProblemError(f"cannot read the manifest {path}: {error}") from error
