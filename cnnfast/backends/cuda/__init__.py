"""The cuda backend: see backend.py."""
