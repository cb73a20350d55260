"""Reproducible performance runs: ``aetheris bench``."""
