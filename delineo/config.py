"""The experiment schema: one typed, validated file describes data, preprocessing, sampling,
augmentation, model, loss, training, inference, post-processing and evaluation.

Validation happens at load time. An unknown or misspelled key, a wrong type or an impossible
value becomes one :class:`~delineo.errors.ConfigError` naming the key, its place in the file and
the closest valid name. Components (``model``, ``loss``, ``train.optimizer``,
``train.schedule``) are ``{name: ..., params}`` dicts checked against the registry.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from delineo.errors import ConfigError
from delineo.registry import LOSSES, MODELS, OPTIMIZERS, SCHEDULES, closest


def _with_name(value: Any, default: str) -> Any:
    """A component given as a bare name or without 'name' gets the default component."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and "name" not in value:
        return {"name": default, **value}
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSource(Strict):
    """Where the cases are: an MSD/nnU-Net folder, a CSV case list or a deoxys HDF5 file."""

    type: Literal["msd", "csv", "hdf5"] = "msd"
    path: str
    channels: Optional[list[str]] = Field(None, description="CSV: image columns, one per channel")
    label_column: str = "label"
    id_column: Optional[str] = None
    group_column: Optional[str] = None
    patient_pattern: Optional[str] = Field(
        None, description="regular expression on the case id whose first group is the patient (e.g. "
                          "'^(pgbm\\d+)_' for pgbm003_19950329), so splits keep a patient's studies together")

    @field_validator("patient_pattern")
    @classmethod
    def _regex(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            import re

            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"'{value}' is not a valid regular expression ({exc})") from None
        return value


class DataConfig(Strict):
    source: DataSource
    labels: Optional[dict[int, str]] = Field(None, description="label value -> name; default from dataset.json")
    folds: int = Field(5, ge=2, le=50)
    seed: int = 0
    stratify: bool = Field(True, description="stratify folds by the group column when there is one")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="patients held out of every fold")
    val_fraction: Optional[float] = Field(None, gt=0.0, lt=1.0, description="one seeded split by patient "
                                          "instead of k folds (0.2: 80/20); it is fold 0, and 'folds' is ignored")
    test_folds: list[int] = Field(default_factory=list, description="HDF5: predefined fold groups held out of "
                                  "training and validation (the test set); fold k is then the k-th remaining group")
    max_cases: Optional[int] = Field(None, ge=2, description="use only the first N cases (quick runs)")


class IntensityConfig(Strict):
    """Per-channel intensity preset."""

    preset: Literal["ct", "mr", "pet", "none", "percentile", "window", "imagenet"] = Field(
        "mr", description="ct: HU window scaled to [-1, 1]; mr: z-score of the volume; pet: SUV clip; percentile: "
                          "clip then z-score; window: clip(x - centre, -width/2, width/2), unscaled; imagenet: "
                          "x / window[1] (255 by default) then ImageNet mean and std")
    window: Optional[tuple[float, float]] = Field(None, description="CT and window: [low, high]; PET: SUV clip; "
                                                                    "imagenet: [0, full scale]")
    foreground_only: bool = Field(False, description="MR: z-score statistics inside the non-zero region")
    percentiles: tuple[float, float] = (0.5, 99.5)

    @model_validator(mode="after")
    def _window_order(self) -> "IntensityConfig":
        if self.window is not None and self.window[0] >= self.window[1]:
            raise ValueError(f"window must be (low, high) with low < high, got {self.window}")
        return self


class RegionConfig(Strict):
    """Train (and predict) on the image restricted to an organ: stage 2 of a region cascade
    (delineo.preprocess.region). Training uses the reference organ (these label values), a
    cascade pipeline the organ its previous stage predicts."""

    labels: list[int] = Field(min_length=1, description="label values that make the organ (e.g. [1, 2]: liver + tumour)")
    margin_mm: float = Field(10.0, ge=0, description="box margin around the organ")
    square: bool = Field(False, description="square (3D: cubic) box over the network's input axes")
    size: Optional[list[int]] = Field(None, description="resize the box to this size (2 in-plane sizes in 2D, 3 in 3D)")
    background: Union[Literal["mean", "keep"], float] = Field(
        "mean", description="outside the organ: its mean intensity, a constant, or keep the image")
    clahe: Optional[float] = Field(None, gt=0, le=1, description="CLAHE clip limit (e.g. 0.01); null = off")

    @field_validator("size")
    @classmethod
    def _sizes(cls, value):
        if value is not None and (len(value) not in (2, 3) or min(value) < 4):
            raise ValueError("size needs 2 (2D) or 3 (3D) sizes >= 4")
        return value


class SliceFitConfig(Strict):
    """Pad (with each slice's minimum) or centre-crop every slice to one in-plane size after
    normalisation, undone exactly on output (delineo.preprocess.slices; the WMH recipe's 256 x 256)."""

    size: tuple[int, int] = Field((256, 256), description="in-plane size of every slice")
    axis: int = Field(2, ge=0, le=2, description="the slice axis (as sampling.axis)")


class PreprocessConfig(Strict):
    orientation: Optional[str] = Field("RAS", description="canonical axis codes, or null to keep")
    spacing: Optional[tuple[float, float, float]] = Field(None, description="target spacing in mm")
    interpolation: Literal["linear", "cubic"] = "linear"
    crop_foreground: bool = True
    intensity: list[IntensityConfig] = Field(default_factory=lambda: [IntensityConfig()])
    region: Optional[RegionConfig] = Field(None, description="restrict the input to an organ (region cascade stage)")
    slice_fit: Optional[SliceFitConfig] = Field(None, description="pad or crop every slice to one size (exact inverse)")

    @field_validator("orientation")
    @classmethod
    def _codes(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        value = value.upper()
        pairs = [set("LR"), set("AP"), set("SI")]
        if len(value) != 3 or sorted(next(i for i, p in enumerate(pairs) if c in p) for c in value) != [0, 1, 2]:
            raise ValueError(f"'{value}' is not a valid orientation such as RAS or LPS")
        return value

    @field_validator("spacing")
    @classmethod
    def _positive(cls, value):
        if value is not None and min(value) <= 0:
            raise ValueError("spacing must be positive")
        return value


class Prob(Strict):
    p: float = Field(0.0, ge=0.0, le=1.0)


class FlipAug(Prob):
    axes: list[int] = Field(default_factory=lambda: [0, 1, 2])


class Rot90Aug(Prob):
    axes: tuple[int, int] = (0, 1)


class AffineAug(Prob):
    degrees: float = Field(15.0, ge=0, le=180)
    scale: tuple[float, float] = (0.85, 1.15)


class ElasticAug(Prob):
    sigma: float = Field(4.0, gt=0)
    magnitude: float = Field(3.0, ge=0)


class RangeAug(Prob):
    range: tuple[float, float]


class NoiseAug(Prob):
    std: float = Field(0.1, ge=0)


class BlurAug(Prob):
    sigma: tuple[float, float] = (0.5, 1.0)


class CutoutAug(Prob):
    """Cutout (DeVries & Taylor 2017): boxes of the image set to ``fill``; the mask is untouched."""

    holes: int = Field(1, ge=1, description="boxes per sample")
    size: float = Field(0.1, gt=0.0, le=1.0, description="box side as a fraction of each spatial side")
    fill: float = Field(0.0, description="value of the boxes (in normalised intensity units)")
    from_epoch: int = Field(0, ge=0, description="off before this epoch (0-based), on from it")


class AugmentConfig(Strict):
    """Joint image/mask augmentation; each transform has its probability ``p`` (0 = off)."""

    flip: FlipAug = FlipAug()
    rot90: Rot90Aug = Rot90Aug()
    affine: AffineAug = AffineAug()
    elastic: ElasticAug = ElasticAug()
    brightness: RangeAug = RangeAug(range=(-0.1, 0.1))
    contrast: RangeAug = RangeAug(range=(0.75, 1.25))
    gamma: RangeAug = RangeAug(range=(0.7, 1.5))
    noise: NoiseAug = NoiseAug()
    blur: BlurAug = BlurAug()
    cutout: CutoutAug = CutoutAug()


class SliceFilterConfig(Strict):
    """Training-slice selection for 2D / 2.5D (:mod:`delineo.sampling.slice_filter`); training only."""

    filters: list[Literal["entropy", "foreground"]] = Field(default_factory=lambda: ["entropy"], min_length=1)
    combine: Literal["all", "any"] = Field("all", description="all: every filter keeps the slice; any: one is enough")
    entropy_threshold: float = Field(2.0, ge=0.0, description="bits; slices at or below it are not drawn")
    bins: int = Field(256, ge=2, description="histogram bins over the slice's own intensity range")
    channel: int = Field(0, ge=0, description="image channel whose entropy is measured")


class SamplingConfig(Strict):
    mode: Literal["3d", "2d", "2.5d"] = "3d"
    patch_size: Optional[list[int]] = Field(None, description="3D: 3 sizes; 2D/2.5D: 2 sizes; null = whole")
    axis: int = Field(2, ge=0, le=2, description="slice axis for 2D and 2.5D")
    context: int = Field(1, ge=0, description="2.5D: neighbours on each side (k = 2*context + 1)")
    foreground_fraction: float = Field(0.33, ge=0.0, le=1.0)
    positive_only: bool = Field(False, description="only samples centred on foreground (cases without any are skipped)")
    batch_size: int = Field(4, ge=1)
    slice_filter: Optional[SliceFilterConfig] = Field(None, description="2D/2.5D: which training slices may be drawn")
    flip_copies: list[int] = Field(default_factory=list, description="spatial axes along which a mirrored copy of "
                                   "every training case is added (e.g. [0, 1]: N cases become 3N); not random flips")

    @field_validator("flip_copies")
    @classmethod
    def _flip_axes(cls, value: list[int]) -> list[int]:
        if any(a not in (0, 1, 2) for a in value) or len(set(value)) != len(value):
            raise ValueError(f"flip_copies takes distinct spatial axes 0, 1, 2; got {value}")
        return value

    @model_validator(mode="after")
    def _patch_dims(self) -> "SamplingConfig":
        if self.slice_filter is not None and self.mode == "3d":
            raise ValueError("slice_filter needs mode 2d or 2.5d")
        if self.patch_size is not None:
            need = 3 if self.mode == "3d" else 2
            if len(self.patch_size) != need or min(self.patch_size) < 4:
                raise ValueError(f"patch_size needs {need} sizes >= 4 for mode {self.mode}")
        return self


class TrainConfig(Strict):
    task: Literal["segmentation", "classification"] = Field(
        "segmentation", description="classification: (B, K) logits trained on label presence per sample; best by F1")
    optimizer: dict[str, Any] = Field(default_factory=lambda: {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4})
    schedule: Optional[dict[str, Any]] = Field(default_factory=lambda: {"name": "poly"})
    epochs: int = Field(50, ge=1)
    max_minutes: Optional[float] = Field(None, gt=0, description="wall-clock budget; stops after the epoch that crosses it")
    iterations_per_epoch: int = Field(50, ge=1)
    val_every: int = Field(1, ge=1)
    snapshot_epochs: list[int] = Field(default_factory=list, description="epochs whose validation predictions are kept (best is always kept)")
    snapshot_every: Optional[int] = Field(None, ge=1, description="also keep the validation predictions of every N-th epoch")
    checkpoint_every: Optional[int] = Field(None, ge=1, description="also keep checkpoints/epoch_N.pt after every N-th epoch")
    early_stopping_patience: Optional[int] = Field(None, ge=1, description="validations without improvement")
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="bf16: forward under bfloat16 autocast (weights, loss, optimiser state stay float32); "
                            "auto: bf16 when a timed probe finds it faster and its gradients agree (delineo.precision)")
    channels_last: bool = Field(True, description="channels-last memory format (about 30% faster 3D convolutions on CPU)")
    num_threads: Optional[int] = Field(None, ge=1)
    grad_clip: Optional[float] = Field(12.0, gt=0)
    freeze_encoder_epochs: int = Field(0, ge=0, description="train only the decoder for the first N epochs (models "
                                       "with a backbone encoder: deeplabv3, backbone_unet, classifier)")
    init_from: Optional[str] = Field(None, description="run folder or checkpoint whose weights start this run "
                                     "(same architecture; an output layer of another size keeps its initialisation)")

    @field_validator("optimizer", mode="before")
    @classmethod
    def _default_optimizer(cls, value):
        return _with_name(value, "adamw")

    @field_validator("schedule", mode="before")
    @classmethod
    def _default_schedule(cls, value):
        return _with_name(value, "poly")


class InferConfig(Strict):
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    batch_size: int = Field(8, ge=1)
    tta: bool = False
    save_probabilities: bool = False
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="bf16: network under bfloat16 autocast; auto: bf16 when a timed probe finds it faster "
                            "and its labels agree with float32 (delineo.precision)")
    max_memory: Optional[str] = Field(
        None, description="cap on the prediction's working memory, e.g. 2GB: windows are accumulated slab by slab "
                          "along the longest axis and labels written as slabs finish (delineo.infer.sliding)")

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory_size(cls, value):
        if value is None:
            return None
        from delineo.infer.memory import parse_size  # a leaf module: no later stage is imported

        parse_size(value)
        return str(value)


class PostprocessConfig(Strict):
    largest_component: bool = Field(False, description="keep only the largest connected component per label")
    min_size: int = Field(0, ge=0, description="remove components smaller than this many voxels")
    fill_holes: bool = False


class LesionEvalConfig(Strict):
    """Lesion-wise evaluation (rules in :mod:`delineo.evaluate.lesions`)."""

    enabled: bool = Field(True, description="lesion counts per case, metrics/lesions.csv and the report's lesion section")
    connectivity: Optional[Literal[4, 6, 8, 18, 26]] = Field(None, description="null = full (26 in 3D, 8 in 2D)")
    min_size: int = Field(0, ge=0, description="components below this many voxels are ignored on both sides")
    min_overlap: float = Field(0.0, ge=0.0, le=1.0, description="0 = any overlap detects; else fraction of the lesion covered")
    size_brackets: list[float] = Field(default_factory=lambda: [0, 10, 400, 1000], description="lower edges, last open")
    size_unit: Literal["voxels", "ml"] = "voxels"

    @field_validator("size_brackets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if not value or value[0] != 0 or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("size_brackets must start at 0 and increase strictly")
        return value


class EvaluateConfig(Strict):
    overlays: int = Field(3, ge=0, description="best, median and worst case overlays in the report")
    hd95: Literal["pooled", "max_directed"] = Field("pooled", description="HD95 definition: MedPy pooled or MONAI max of directed")
    aggregate: list[Literal["mean_per_case", "pooled", "per_slice"]] = Field(
        default_factory=lambda: ["mean_per_case", "pooled", "per_slice"], description="aggregations in summary and report")
    fbeta: list[float] = Field(default_factory=lambda: [2.0], description="pixel-level F-beta scores (f2, ...)")
    slice_axis: Optional[int] = Field(None, ge=0, le=2, description="per_slice axis; null = sampling.axis (run) or 2")
    lesions: LesionEvalConfig = LesionEvalConfig()


class ExplainConfig(Strict):
    """Defaults of ``delineo explain`` for this model (each command-line option overrides its
    field). Typed so that a misspelt key is refused rather than silently ignored."""

    method: str = Field("guided-backprop", description="explanation method (see delineo explain --help)")
    target: str = Field("positive-prediction", description="segmentation target")
    layer: Optional[str] = Field(None, description="layer for activation / Grad-CAM")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="prediction threshold of the targets")
    params: dict[str, Any] = Field(default_factory=dict, description="method parameters, e.g. {steps: 64}")
    sanity_flag_above: float = Field(0.9, gt=-1.0, le=1.0, description="sanity check: flag a map whose rank "
                                     "correlation after full randomisation stays above this")


class TrackConfig(Strict):
    """Where a training's metrics go besides ``log.csv`` and the experiment database (delineo.track)."""

    mirrors: list[str] = Field(
        default_factory=list, description="also log every epoch's metrics, the resolved config (as params), the "
        "final checkpoint paths (as tags) and the evaluation summary (eval.* metrics) to these trackers, from "
        "rank 0: tensorboard (event files in the run "
        "folder's tensorboard/), mlflow; needs pip install 'delineo[mirrors]'; a mirror that fails warns once and "
        "never stops training (delineo train --mirror NAME adds one)")
    mlflow_uri: Optional[str] = Field(
        None, description="MLflow tracking URI, e.g. http://host:5000 or sqlite:///path/mlflow.db; null: "
                          "MLFLOW_TRACKING_URI, else sqlite:///RUNS/mlflow.db beside the runs")

    @field_validator("mirrors")
    @classmethod
    def _known_mirrors(cls, value: list[str]) -> list[str]:
        from delineo.track.mirrors import check_names  # a light module: the mirrors' packages load when used

        return check_names(value)


class ExperimentConfig(Strict):
    name: str = "experiment"
    data: DataConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    sampling: SamplingConfig = SamplingConfig()
    augment: AugmentConfig = AugmentConfig()
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "unet"})
    loss: dict[str, Any] = Field(default_factory=lambda: {"name": "dice_ce"})
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    explain: ExplainConfig = ExplainConfig()
    track: TrackConfig = Field(TrackConfig(), description="copies of the training's metrics in TensorBoard or MLflow")

    @field_validator("model", mode="before")
    @classmethod
    def _default_model(cls, value):
        return _with_name(value, "unet")

    @field_validator("loss", mode="before")
    @classmethod
    def _default_loss(cls, value):
        return _with_name(value, "dice_ce")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("name must be a plain folder name")
        return value

    @model_validator(mode="after")
    def _region_size(self) -> "ExperimentConfig":
        region, need = self.preprocess.region, 3 if self.sampling.mode == "3d" else 2
        if region is not None and region.size is not None and len(region.size) != need:
            raise ValueError(f"preprocess.region.size needs {need} sizes for sampling.mode {self.sampling.mode}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def check_components(self, source: str = "experiment") -> None:
        """Check component names and parameters against the registries."""
        passed_model = ("in_channels", "out_channels", "dims")
        for where, spec, registry, extra in (
            ("model", self.model, MODELS, passed_model),
            ("loss", self.loss, LOSSES, ("num_classes",)),
            ("train.optimizer", self.train.optimizer, OPTIMIZERS, ("params",)),
            ("train.schedule", self.train.schedule, SCHEDULES, ("optimizer", "total_epochs")),
        ):
            if spec is None:
                continue
            try:
                registry.check(spec, where, extra=extra)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None


def _unknown_keys(model: type[BaseModel], data: Any, where: str, source: str) -> None:
    """Walk ``data`` against ``model`` and report the first unknown key with the closest name."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            place = f"{where}.{key}" if where else str(key)
            raise ConfigError(
                f"{source}: unknown key '{key}' at {place}{closest(str(key), fields)}; "
                f"valid keys{' in ' + where if where else ''}: {', '.join(fields)}."
            )
        annotation = fields[key].annotation
        sub = _submodel(annotation)
        if sub is not None:
            if isinstance(value, list):
                for i, item in enumerate(value):
                    _unknown_keys(sub, item, f"{where + '.' if where else ''}{key}[{i}]", source)
            else:
                _unknown_keys(sub, value, f"{where + '.' if where else ''}{key}", source)


def _submodel(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=3' -> (['train', 'epochs'], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key.sub=value.")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text}: empty key.")
    return parts, yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides or []:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else node[part]
                if not isinstance(node[part], dict):
                    raise ConfigError(f"--set {text}: '{part}' is not a section.")
            node = node[part]
        node[parts[-1]] = value
    return data


def config_from_dict(data: dict[str, Any], source: str = "experiment", base_dir: Path | None = None) -> ExperimentConfig:
    """Validate a raw dict; relative data paths are resolved against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the experiment must be a mapping of sections, got {type(data).__name__}.")
    _unknown_keys(ExperimentConfig, data, "", source)
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        place = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(f"{source}: invalid value at {place}: {err['msg']}.") from None
    raw_path = str(cfg.data.source.path)
    if raw_path.startswith(PACKAGE_SCHEME):
        cfg.data.source.path = str(package_path(raw_path, source))
    elif base_dir is not None:
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            cfg.data.source.path = str((base_dir / path).resolve())
    cfg.check_components(source)
    return cfg


#: ``data.source.path: package:sample_data/hippocampus`` names data inside the installed package
PACKAGE_SCHEME = "package:"
PACKAGE_DIR = Path(__file__).resolve().parent


def package_path(value: str, source: str = "experiment") -> Path:
    """``package:REL`` -> the file or folder REL inside the installed ``delineo`` package."""
    rel = Path(value[len(PACKAGE_SCHEME):].lstrip("/"))
    if ".." in rel.parts:
        raise ConfigError(f"{source}: data.source.path {value}: a package: path stays inside the package.")
    return (PACKAGE_DIR / rel).resolve()


def shipped_experiment(path: Path) -> bool:
    """True for the example and recipe experiment files that ship inside the package."""
    folder = Path(path).resolve().parent
    return any(folder == d or folder.is_relative_to(d) for d in
               ((PACKAGE_DIR / "examples").resolve(), (PACKAGE_DIR / "recipes").resolve()))


def _sample_fallback(cfg: ExperimentConfig, written: str, path: Path) -> None:
    """A shipped example whose data path (relative to a source checkout, e.g. ../../shared/data/
    hippocampus) does not exist, as after ``pip install``, trains on the embedded sample of the
    same name (``sample_data/hippocampus``), said on an INFO line; an installed example thus runs
    without ``--set data.source.path=...``. A path given with --set is never replaced."""
    current = Path(cfg.data.source.path)
    if current.exists() or Path(written).is_absolute() or written.startswith(PACKAGE_SCHEME) or \
            not shipped_experiment(path):
        return
    sample = PACKAGE_DIR / "sample_data" / Path(written).name
    if sample.exists():
        logging.getLogger("delineo.config").info(
            "%s: data.source.path %s does not exist here (a path of the source checkout); using the sample data "
            "shipped with Delineo, %s. Point it at your data with --set data.source.path=...", path, written, sample)
        cfg.data.source.path = str(sample)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load and validate an experiment file (YAML or JSON), applying ``--set`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found.")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - PyYAML raises AttributeError etc. on hostile tags (!!timestamp x)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML/JSON ({first[:160]}).") from None
    data = data or {}
    written = _source_path(data)
    data = apply_overrides(data, overrides or [])
    cfg = config_from_dict(data, source=str(path), base_dir=path.parent)
    if written is not None and _source_path(data) == written:
        _sample_fallback(cfg, written, path)
    return cfg


def _source_path(data: Any) -> str | None:
    """``data.source.path`` as written in a raw experiment dict (None when absent)."""
    try:
        value = data["data"]["source"]["path"]
    except (KeyError, TypeError):
        return None
    return None if value is None else str(value)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    from delineo.io.atomic import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
