"""Benchmarks: ``python -m bench`` (CPU, vs hand-written NumPy), bench/gpu.py (CuPy)."""
