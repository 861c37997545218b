"""Fixtures the tests and the benchmarks share: seeded espeak-ng speech (`speech`), the small NeMo models built
here (`build_test_models`), the one uvicorn launcher (`servers`). Imported as `tests.support.*` from the repository
root."""
