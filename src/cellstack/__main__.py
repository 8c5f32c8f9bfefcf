"""``python -m cellstack`` is the same as the ``cellstack`` console script."""

from cellstack.cli import main

raise SystemExit(main())
