"""The numba backend: see backend.py."""
