"""Delineo track stage."""
