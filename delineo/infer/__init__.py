"""Delineo infer stage."""
