"""Delineo augment stage."""
