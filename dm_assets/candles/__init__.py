"""Candles domain: pure computation (``compute``, ``checks``, ``health``) and its Dagster glue.

The computation modules import neither Dagster nor the stores, so they are tested and
benchmarked on their own; see ``compute`` for the bucket conventions.
"""
