"""Benchmarks of the phonehome plugin with budgets, run by ``tox -e bench``.

Not part of the test suite: ``python -m bench.run`` measures, prints a table of
medians and ratios taken in the same run, writes it to ``bench-results/`` as
markdown and JSON, and exits non-zero when a budget is missed. See
``BENCHMARKS.md`` at the repository root.
"""
