"""Delineo evaluate stage: per-case metrics, summary tables, plots and the HTML run report."""

from delineo.evaluate.aggregate import AGGREGATIONS, aggregate
from delineo.evaluate.distances import DEFAULT_HD95, HD95, hd95
from delineo.evaluate.lesions import LesionRules, score_lesions, summarise_lesions
from delineo.evaluate.metrics import METRICS, score_binary, score_case, surface_distances
from delineo.evaluate.plots import plot_dice_box, plot_learning_curves, plot_overlay
from delineo.evaluate.report import write_report
from delineo.evaluate.table import (
    evaluate_folders,
    read_cases_csv,
    rows_from_scores,
    score_folders,
    summarise,
    write_cases_csv,
    write_summary_json,
)

__all__ = [
    "AGGREGATIONS",
    "aggregate",
    "DEFAULT_HD95",
    "HD95",
    "hd95",
    "LesionRules",
    "score_lesions",
    "summarise_lesions",
    "METRICS",
    "score_case",
    "score_binary",
    "surface_distances",
    "rows_from_scores",
    "write_cases_csv",
    "read_cases_csv",
    "summarise",
    "write_summary_json",
    "score_folders",
    "evaluate_folders",
    "plot_learning_curves",
    "plot_dice_box",
    "plot_overlay",
    "write_report",
]
