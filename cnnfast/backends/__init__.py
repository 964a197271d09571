"""Backends: one module each, registered by name in ``cnnfast.registry``."""
