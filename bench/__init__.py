"""Benchmarks, each run as a script (``python bench/chaos.py``); sibling modules import
each other by bare name then. The package exists so that tests can import a bench
module by name (``from bench.chaos_faults import FaultProxy``) without touching
``sys.path``."""
