"""The export stage: sentence-transformers model -> ONNX -> optimized -> int8 -> parity gate -> model store.

Run it with ``python -m export --help``. It depends on :mod:`embedserve` (the parity gate runs the production
engine); nothing in :mod:`embedserve` depends on it.
"""
