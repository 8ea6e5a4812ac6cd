"""Benchmarks, simulations and plots of the project (scripts; see ``benchmarks/README.md``).

The scripts run from the repository root (``python benchmarks/<script>.py``); :mod:`.timing` and
:mod:`.common` hold what they share.
"""
