"""The built-in mirrors: TensorBoard event files and an MLflow run (the ``mirrors`` extra).

Both receive the same things: the flattened resolved config (TensorBoard hyper-parameters and a
text panel; MLflow params), every epoch's metrics with the epoch (1-based, as in the experiment
database) as step, and at the end the session's status and final files as tags (a TensorBoard
text panel; MLflow run tags). Their packages are imported here only inside methods, which run on
the mirror's own thread (:mod:`delineo.track.mirrors`), so importing this module costs nothing.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Optional

from delineo.track.mirrors import Mirror, MirrorContext, register_mirror


def _shown(uri: str) -> str:
    """A URI fit for a log line: a password in it is hidden."""
    return re.sub(r"//([^/@:]+):[^/@]+@", r"//\1:***@", uri)


@register_mirror
class TensorBoardMirror(Mirror):
    """Event files in the run folder's ``tensorboard/``: ``tensorboard --logdir runs`` shows every
    experiment and fold side by side. A resumed run purges steps after the epochs already done, so
    a repeated epoch is not drawn twice."""

    name = "tensorboard"
    module = "tensorboard"

    def __init__(self, ctx: MirrorContext) -> None:
        super().__init__(ctx)
        from torch.utils.tensorboard import SummaryWriter

        self.dir = ctx.run_dir / "tensorboard"
        self.step = ctx.start_epoch  # the last epoch written
        self.writer = SummaryWriter(str(self.dir), purge_step=ctx.start_epoch + 1 if ctx.resume else None)

    @classmethod
    def where(cls, ctx: MirrorContext) -> str:
        return str(ctx.run_dir / "tensorboard")

    def params(self, flat: dict[str, str]) -> None:
        from torch.utils.tensorboard.summary import hparams

        file_writer = self.writer._get_file_writer()  # the same event file as the scalars, not a sub-run
        for summary in hparams(flat, {}):
            file_writer.add_summary(summary)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat.items()), self.ctx.start_epoch)
        self.writer.flush()

    def epoch(self, epoch: int, metrics: dict[str, float], wall: float) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch, walltime=wall)
        self.step = epoch
        self.writer.flush()  # so that a TensorBoard watching the run sees each epoch as it ends

    def evaluation(self, metrics: dict[str, float], step: int, tags: dict[str, str]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.add_text("files", "\n".join(f"    {k}: {v}" for k, v in tags.items()), step)
        self.writer.flush()

    def finish(self, status: Optional[str], tags: dict[str, str]) -> None:
        if status is not None:
            self.writer.add_text("files", "\n".join(f"    {k}: {v}" for k, v in tags.items()), self.step)
        self.writer.close()


_MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_PARAM_CHARS = re.compile(r"[^\w\-. /]")


def mlflow_uri(ctx: MirrorContext) -> str:
    """``track.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store in the runs root."""
    return (ctx.options.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(Path(ctx.runs_root) / 'mlflow.db').resolve()}")


def _local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


@register_mirror
class MlflowMirror(Mirror):
    """One MLflow run per session, in the MLflow experiment of the same name, found again by its
    ``delineo.session`` tag on ``--resume``. A local store (SQLite, a folder) keeps its artefact
    root under the runs root rather than in the working folder. Unless the environment says
    otherwise, MLflow's own HTTP retries are off and a request gives up after 30 s: this mirror
    retries by itself, without holding anything up."""

    name = "mlflow"
    module = "mlflow"

    def __init__(self, ctx: MirrorContext) -> None:
        super().__init__(ctx)
        self.uri = mlflow_uri(ctx)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if self.uri.startswith("file:") or "://" not in self.uri:  # a folder store was asked for by name
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        self.known_params: dict[str, str] = {}
        self.reopened_status: Optional[str] = None  # the status of a run found again (resume, evaluation)
        self.run_id = self._open()

    @classmethod
    def where(cls, ctx: MirrorContext) -> str:
        return _shown(mlflow_uri(ctx))

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.ctx.experiment
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        artefacts = (Path(self.ctx.runs_root) / "mlflow-artifacts").resolve().as_uri() if _local(self.uri) else None
        try:
            return self.client.create_experiment(name, artifact_location=artefacts)
        except MlflowException:  # another fold created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _open(self) -> str:
        ctx = self.ctx
        eid = self._experiment_id()
        if ctx.resume:
            runs = self.client.search_runs([eid], filter_string=f"tags.`delineo.session` = '{ctx.uid}'",
                                           max_results=1)
            if runs:
                self.reopened_status = runs[0].info.status
                self.client.update_run(runs[0].info.run_id, status="RUNNING")
                self.known_params = dict(runs[0].data.params)
                return runs[0].info.run_id
        fold = "all" if ctx.fold is None else f"fold_{ctx.fold}"
        run = self.client.create_run(eid, run_name=f"{ctx.experiment}/{fold}",
                                     tags={"delineo.session": ctx.uid, "delineo.run_dir": str(ctx.run_dir),
                                           "delineo.fold": fold})
        return run.info.run_id

    def params(self, flat: dict[str, str]) -> None:
        from mlflow.entities import Param

        # MLflow params never change: a resumed run keeps those it has (the database holds the new config)
        todo = [Param(k, v) for k, v in _params(flat).items() if k not in self.known_params]
        for i in range(0, len(todo), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=todo[i:i + 100])

    def epoch(self, epoch: int, metrics: dict[str, float], wall: float) -> None:
        from mlflow.entities import Metric

        stamp = int(wall * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_key(k), v, stamp, epoch) for k, v in metrics.items()])

    def evaluation(self, metrics: dict[str, float], step: int, tags: dict[str, str]) -> None:
        from mlflow.entities import Metric, RunTag

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_key(k), v, stamp, step) for k, v in metrics.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])

    def finish(self, status: Optional[str], tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if status is None:  # after an evaluation: the training's status stays
            if self.reopened_status:
                self.client.update_run(self.run_id, status=self.reopened_status)
            return
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(self.run_id, _MLFLOW_STATUS.get(status, "FINISHED"))


def _key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . space /)."""
    return _PARAM_CHARS.sub("_", name)[:250]


def _params(flat: dict[str, str]) -> dict[str, str]:
    """Params as MLflow stores them everywhere (values up to 500 characters, the smallest server limit)."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        out[_key(k)] = v if len(v) <= 500 else v[:497] + "..."
    return out
