"""Benchmarks of ruxa_async against hand-written baselines, on the bundled simulator.

Run ``python -m benchmarks`` (full), ``--quick`` or ``--smoke``; see ``run.py``.
"""
