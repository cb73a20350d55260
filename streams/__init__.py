"""Aetheris stream processors (faust): job state, snapshots and query projections.

The processors themselves arrive with the stream-processor issue; this package holds the faust
application they attach to, configured from the same settings as every other role.
"""
