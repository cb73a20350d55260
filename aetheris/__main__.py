"""``python -m aetheris``."""

from aetheris.cli import main

main()
