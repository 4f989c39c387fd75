"""Delineo sampling stage."""
