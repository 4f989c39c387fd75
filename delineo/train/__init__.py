"""Delineo train stage."""
