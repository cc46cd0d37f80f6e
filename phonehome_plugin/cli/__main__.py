"""``python -m phonehome_plugin.cli``: the same as the ``phonehome`` command."""

from phonehome_plugin.cli.commands import main

raise SystemExit(main())
