"""``python -m glacierflow``."""

from glacierflow.cli import main

raise SystemExit(main())
