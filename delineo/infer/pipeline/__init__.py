"""Pipelines of models as one ``.delineo`` file: ensembles, learned fusion, test-time
augmentation, post-processing chosen on validation data, gates and region cascades.

- ``stages``: the :class:`Stage` interface and the ``STAGES`` registry (read its docstring first);
- ``segment``: trained runs combined by mean, weighted mean, vote or learned fusion;
- ``tta``: test-time augmentation and uncertainty; ``members``: trained models (fold runs);
- ``config``: the pipeline file schema; ``build``: assembly and searches; ``runner``: :class:`Pipeline`.
"""

from delineo.infer.pipeline.stages import STAGES, BuildContext, CaseData, RunOptions, Stage, StageOutput, register_stage

__all__ = ["STAGES", "BuildContext", "CaseData", "RunOptions", "Stage", "StageOutput", "register_stage"]
