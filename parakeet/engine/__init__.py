"""The engine: NeMo's Parakeet-TDT modules (and Sortformer, Silero VAD) run by hand on one device.

The only part of the package that imports torch or NeMo (an import-linter contract in pyproject.toml); the pipeline,
the jobs and the API never import it: they are typed on `parakeet.core.engine`'s protocols, and the composition root
(server.py) hands them an engine built by `parakeet.engine.factories`. Importing this package is cheap (no torch).

Modules, one job each (README "How it works"): `loading` (checkpoints), `device` (precision, device facts, the one
out-of-memory wrapper), `features` (padding, mel features), `encoder` (the encoder seam: mel features -> encoder
frames), `decoding` (NeMo's decoding variants and phrase boosting), `hypotheses` (timestamps and confidence of
NeMo's hypotheses), `asr` (the offline batch: `ParakeetEngine`), `streaming` (the decoding half of a stream step),
`cuda_graphs` (the start-up self-check), `vad` (Silero), `diarizer` (Sortformer), `build` (`build_engine`),
`factories` (what server.py wires).
"""
