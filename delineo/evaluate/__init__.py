"""Delineo evaluate stage."""
