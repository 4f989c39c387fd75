"""Delineo explain stage."""
