"""The ``aetheris`` command line."""

from aetheris.cli.app import main

__all__ = ["main"]
