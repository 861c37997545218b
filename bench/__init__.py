"""Benchmarks and GPU checks, one command: `python -m bench NAME [args]` from the repository root (`python -m bench`
lists them). Each module is one benchmark with its own `--help`; results go under bench/results/ and their numbers,
with the command that made them, into BENCHMARKS.md. Shared helpers are written once: the speech clips
(`bench.engine.clips`), the server launcher (`tests.support.servers`), the test speech and models
(`tests.support`)."""
