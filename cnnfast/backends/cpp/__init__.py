"""The cpp backend: see backend.py."""
