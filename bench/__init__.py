"""Benchmarks: `python -m bench.pipeline`. Not tests; they print ratios and write JSON."""

from streamproc.logs import silence_dependency_warnings

# Before the benchmark modules import weaviate-client, so its import-time warnings stay quiet.
silence_dependency_warnings()
