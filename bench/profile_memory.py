"""Where the plugin's memory before its first report goes: ``python -m bench.profile_memory``.

Attribution by counterfactual: the memory benchmark's child is run as is, then
with the host having imported a group of modules before its baseline (as if the
plugin did not need them, or the host had them already), and once with glibc
limited to one malloc arena. The drop in "added before the first report" against
the run as is is what that group costs the plugin. Medians of a few fresh
processes each; prints a table, then the same as JSON.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence

from bench import guard
from bench.memory import _run_child
from bench.results import MIB
from bench.servers import HTTPEndpoint

VARIANTS: list[tuple[str, Sequence[str], Mapping[str, str] | None]] = [
    ("as measured", (), None),
    ("host already imported sqlite3", ("sqlite3",), None),
    ("host already imported hashlib, hmac", ("hashlib", "hmac"), None),
    ("host already imported tenacity", ("tenacity",), None),
    (
        "host already imported json, uuid, gzip, queue, heapq, platform",
        ("json", "uuid", "gzip", "queue", "heapq", "platform"),
        None,
    ),
    (
        "all of the above",
        (
            "sqlite3",
            "hashlib",
            "hmac",
            "tenacity",
            "json",
            "uuid",
            "gzip",
            "queue",
            "heapq",
            "platform",
        ),
        None,
    ),
    ("as measured, MALLOC_ARENA_MAX=1", (), {"MALLOC_ARENA_MAX": "1"}),
]


def main(runs: int = 3) -> None:
    guard.install()
    found: dict[str, tuple[float, float]] = {}
    with HTTPEndpoint(200) as ok:
        for name, preload, env in VARIANTS:
            results = [_run_child("typical", ok.url, preload, env) for _ in range(runs)]
            rss = statistics.median(r["synced"]["rss"] - r["baseline"]["rss"] for r in results)
            uss = statistics.median(r["synced"]["uss"] - r["baseline"]["uss"] for r in results)
            found[name] = (rss / MIB, uss / MIB)
    base_rss, base_uss = found["as measured"]
    print(f"{'variant':66s} {'RSS added':>9s} {'saves':>6s} {'USS added':>9s} {'saves':>6s}")
    for name, (rss, uss) in found.items():
        print(f"{name:66s} {rss:9.2f} {base_rss - rss:6.2f} {uss:9.2f} {base_uss - uss:6.2f}")
    print(json.dumps({name: {"rss_mib": r, "uss_mib": u} for name, (r, u) in found.items()}))


if __name__ == "__main__":
    main()
