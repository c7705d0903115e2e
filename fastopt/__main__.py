"""``python -m fastopt``: the same as the ``fastopt`` command."""

from .cli import main

raise SystemExit(main())
