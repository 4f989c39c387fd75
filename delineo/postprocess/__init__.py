"""Delineo postprocess stage."""
