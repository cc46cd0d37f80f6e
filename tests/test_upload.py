"""``phonehome upload``: an export sent from a connected machine through the plugin's own
transport. Every line is checked first (the manifest's sha256, the report's schema);
it goes through the configured proxy with the configured CA bundle, under the report's
own ``Idempotency-Key``, so that twice is once at the receiver. (The nine-day export
uploaded twice is in test_export.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import faultservers
import operator_support
import pytest
from faultservers import FaultServer, Proxy, Reply, make_tls
from operator_support import Installation, run_cli, write_config

from phonehome_plugin.admin.export import export, manifest_of
from phonehome_plugin.admin.locate import ProblemError, Sources
from phonehome_plugin.admin.upload import upload
from phonehome_plugin.cli import commands
from phonehome_plugin.config.settings import Settings
from phonehome_plugin.delivery.retry import RetryPolicy
from phonehome_plugin.testing.endpoint import Receiver

counting_server = operator_support.counting_server  # fixture
installation = operator_support.installation  # fixture
shell_env = operator_support.shell_env  # fixture

assert faultservers  # the fault servers are the project's own (testing.faults)


@pytest.fixture
def exported(installation: Installation, tmp_path: Path) -> Path:
    """An export of the two reports an offline installation kept, with its manifest."""
    target = tmp_path / "pending.jsonl"
    export(Sources.from_files(str(installation.config), str(installation.data), {}), str(target))
    return target


def test_an_export_goes_through_the_proxy_with_the_ca_bundle_and_its_own_keys(
    exported: Path, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    tls = make_tls(tmp_path)
    lines = exported.read_bytes().splitlines()
    with FaultServer(then=Reply(202), tls=tls.server) as server, Proxy() as proxy:
        config = write_config(
            tmp_path / "connected.yaml",
            {"endpoint": server.url, "proxy": proxy.url, "ca_bundle": str(tls.ca_file)},
        )
        twice = [
            run_cli(["upload", str(exported), "--config", str(config)], tmp_path, shell_env)
            for _ in range(2)
        ]
        reports, accepted, duplicates = server.reports, server.accepted, server.duplicates

    for done in twice:
        assert done.code == commands.OK, done.stderr
    assert proxy.tunnels == [f"127.0.0.1:{server.port}"] * 2 * len(lines)
    ids = [json.loads(line)["report_id"] for line in lines]
    assert sorted(reports) == sorted(ids)
    assert all(accepted[i] == 1 and duplicates[i] == 1 for i in ids), "twice is once"
    assert [reports[i] for i in ids] == [json.loads(line) for line in lines]


def test_a_line_that_does_not_match_the_manifest_is_refused_and_not_sent(
    exported: Path, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    first, second = exported.read_bytes().splitlines()
    exported.write_bytes(first + b"\n" + second.replace(b'"trial"', b'"active"') + b"\n")
    with Receiver() as receiver:
        done = run_cli(["upload", str(exported), "--endpoint", receiver.url], tmp_path, shell_env)
        arrived = receiver.reports

    assert done.code == commands.PROBLEM
    assert done.stderr.strip() == "phonehome: 1 report(s) not delivered (see above)"
    lines = done.stdout.decode().splitlines()
    assert lines[0].endswith(": sent (HTTP 202)")
    assert lines[1].endswith(": refused (sha256 differs from the manifest)")
    assert [r["report_id"] for r in arrived] == [json.loads(first)["report_id"]]


def test_without_a_manifest_every_line_is_still_checked_against_the_schema(
    exported: Path, tmp_path: Path
) -> None:
    manifest_of(exported).unlink()
    first, _ = exported.read_bytes().splitlines()
    bad = json.loads(first)
    bad["users"]["first_email"] = 42
    exported.write_bytes(first + b"\n" + json.dumps(bad).encode() + b"\nnot json\n")
    with Receiver() as receiver:
        done = upload(exported, Settings(endpoint=receiver.url), policy=RetryPolicy(deadline=5))
        arrived = len(receiver.reports)

    assert [item.result for item in done] == ["sent", "refused", "refused"]
    assert done[1].detail.startswith("fails the schema: ")
    assert done[2].detail == "not JSON"
    assert arrived == 1


def test_an_endpoint_that_fails_leaves_the_report_failed_and_exit_1(
    exported: Path, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    with FaultServer(then=Reply(503)) as server:
        config = write_config(tmp_path / "connected.yaml", {"endpoint": server.url, "timeout": 1})
        done = run_cli(
            ["upload", str(exported), "--config", str(config), "--json"], tmp_path, shell_env
        )

    assert done.code == commands.PROBLEM
    assert {item["result"] for item in json.loads(done.stdout)} == {"failed"}
    assert server.reports == {}


def test_an_upload_where_telemetry_is_off_is_refused(
    exported: Path, tmp_path: Path, shell_env: dict[str, str]
) -> None:
    with Receiver() as receiver:
        done = run_cli(
            ["upload", str(exported), "--endpoint", receiver.url],
            tmp_path,
            {**shell_env, "DO_NOT_TRACK": "1"},
        )
        assert receiver.requests == []
    assert done.code == commands.PROBLEM
    assert (
        done.stderr.strip() == "phonehome: not uploaded: telemetry is off: DO_NOT_TRACK=1 is set"
    )


def test_a_named_manifest_must_exist_and_a_count_mismatch_is_refused(
    exported: Path, tmp_path: Path
) -> None:
    settings = Settings(endpoint="http://127.0.0.1:9/v1/reports")
    with pytest.raises(ProblemError, match="does not exist"):
        upload(exported, settings, tmp_path / "no.manifest.json")
    exported.write_bytes(exported.read_bytes().splitlines()[0] + b"\n")
    with pytest.raises(ProblemError, match="where its manifest lists 2"):
        upload(exported, settings)
