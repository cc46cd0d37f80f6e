"""Example third-party MaestroHub modules that contribute to phonehome reports.

Not loaded by anything on its own: the demo registers them with its simulated
host, and module authors copy them as a starting point.
"""
