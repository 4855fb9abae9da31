"""``python -m glacierflow``."""

from glacierflow.cli.main import main

raise SystemExit(main())
