"""Delineo preprocess stage."""
