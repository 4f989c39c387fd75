"""Delineo data stage."""
