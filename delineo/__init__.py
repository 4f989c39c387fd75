"""Delineo: deep-learning auto-delineation of tumours, lesions and organs in medical images."""

__version__ = "0.1.0"
