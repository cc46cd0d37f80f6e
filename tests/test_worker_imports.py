"""No job imports a module: everything the worker uses is loaded by ``on_startup``.

A fork while a thread is importing hands the child a half-initialised module or
an import lock held by a thread that is gone, so the worker must never import
lazily (see :mod:`phonehome_plugin.worker`). A fresh interpreter runs a host
through every kind of job (the store opened, a startup, first-user and periodic
report built and sent, a location lookup, a failed send retried, shutdown) and
lists the modules that appeared after ``on_startup``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from datetime import timedelta
    from faultservers import START, FaultServer, Host, Linger, Reply

    geo = b'{"status": "success", "query": "203.0.113.9", "country": "X", "regionName": "Y",' \\
        b' "city": "Z", "isp": "I"}'
    with FaultServer([Reply(503)], then=Reply(202)) as endpoint, \\
            FaultServer(then=Linger(200, geo)) as geoip:
        config = {"endpoint": endpoint.url, "geoip_url": geoip.url}
        host = Host(__import__("pathlib").Path(sys.argv[1]), config)
        host.start()
        before = set(sys.modules)
        host.tick(START)
        host.pm.hook.on_user_created(
            app=host.app, user={"id": "u1", "email": "a@example.com", "created_at": START}
        )
        assert host.runtime.worker.wait_idle(20)
        for hours in (1, 2, 3, 26):
            host.tick(START + timedelta(hours=hours))
        host.shutdown()
        triggers = sorted(r.get("trigger", "") for r in endpoint.reports.values())
        print(json.dumps({"new": sorted(set(sys.modules) - before), "triggers": triggers}))
    """
)


def test_a_job_imports_nothing_that_on_startup_did_not(tmp_path: Path) -> None:
    tests = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests,
        env={"PYTHONPATH": str(tests), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # The run went through every kind of job...
    assert {"startup", "first_user", "periodic"} <= set(found["triggers"]), found
    # ...and none of them imported anything.
    assert found["new"] == []
