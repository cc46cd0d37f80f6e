"""The kit's pytest plugin (:mod:`phonehome_plugin.testing.pytest_plugin`), run by pytest
itself in a child process, as a module author's suite runs it: enabled explicitly, its
fixtures clear the developer's telemetry switches and keep the test on the machine."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

AUTHOR_TESTS = """
import os
import socket

import pytest

from hookspecs import hookimpl
from phonehome_plugin.testing import loopback


class Probe:
    name = "acme.probe"

    def collect(self):
        return {"ok": True}


@hookimpl(optionalhook=True)
def phonehome_register_collectors(register):
    register(Probe())


def test_the_switches_are_cleared_and_reports_arrive(phonehome):
    assert "DO_NOT_TRACK" not in os.environ
    phonehome.host.plugin_manager.register(__import__(__name__))
    phonehome.start()
    assert phonehome.section("acme.probe") == {"ok": True}


def test_lookups_and_connections_off_the_machine_raise(phonehome_network_guard):
    with pytest.raises(socket.gaierror, match="must stay on loopback"):
        socket.getaddrinfo("telemetry.maestrohub.com", 443)
    with socket.socket() as sock, pytest.raises(OSError, match="must stay on loopback"):
        sock.connect(("192.0.2.1", 443))


def test_without_the_fixtures_nothing_is_changed():
    assert os.environ["DO_NOT_TRACK"] == "1"
    assert socket.getaddrinfo is not loopback.getaddrinfo
"""


def test_authors_enable_it_and_its_fixtures_do_what_they_say(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DO_NOT_TRACK", "1")  # in the developer's shell
    pytester.makeconftest('pytest_plugins = ["phonehome_plugin.testing.pytest_plugin"]')
    pytester.makepyfile(test_author=textwrap.dedent(AUTHOR_TESTS))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_it_is_not_loaded_unless_enabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_author="""
        def test_uses_the_kit(phonehome):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'phonehome' not found*"])
