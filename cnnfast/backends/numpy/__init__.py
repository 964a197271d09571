"""The numpy backend: see backend.py."""
