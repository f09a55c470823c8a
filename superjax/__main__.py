"""``python -m superjax ...`` is the ``superjax`` command."""

from superjax.cli import main

raise SystemExit(main())
