"""``python -m glacierflow``."""

from glacierflow.cli import main

main()
