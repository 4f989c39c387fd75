"""Delineo explain stage: segmentation-native explanations of a trained model.

Entry points: :func:`explain` / :func:`explain_full` (a map on the image grid),
:func:`sanity` (model-randomisation check), :func:`list_layers` (names for ``layer=``),
:func:`save_map_nifti` / :func:`save_panels` (outputs), and the functional core in
:mod:`~delineo.explain.attribution`, :mod:`~delineo.explain.activation`,
:mod:`~delineo.explain.rules`, :mod:`~delineo.explain.targets` and
:mod:`~delineo.explain.stitch` (whose :func:`gaussian_importance` prediction shares).
"""

from delineo.explain.api import METHODS, MODES, Explanation, explain, explain_full, get_method, register_method, sanity
from delineo.explain.layers import conv_layers, list_layers
from delineo.explain.lesion_occlusion import lesion_occlusion  # registers the "lesion-occlusion" method
from delineo.explain.outputs import choose_slices, save_map_nifti, save_panels
from delineo.explain.rules import RULES, gradient_rule
from delineo.explain.sanity import SanityReport, sanity_check
from delineo.explain.stitch import gaussian_importance, slice_by_slice, stack_neighbours, stitch_patches
from delineo.explain.targets import TARGETS, make_target, region_mask

__all__ = [
    "METHODS", "MODES", "RULES", "TARGETS", "Explanation", "SanityReport", "choose_slices", "conv_layers",
    "explain", "explain_full", "gaussian_importance", "lesion_occlusion", "get_method", "gradient_rule", "list_layers",
    "make_target", "region_mask", "register_method", "sanity", "sanity_check", "save_map_nifti",
    "save_panels", "slice_by_slice", "stack_neighbours", "stitch_patches",
]
