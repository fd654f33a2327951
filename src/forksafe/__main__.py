"""``python -m forksafe``."""

from forksafe._cli import main

raise SystemExit(main())
