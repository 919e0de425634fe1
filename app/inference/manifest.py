"""Model manifests: every fact about a model file travels with it, validated.

A manifest is a JSON document (see ``models/manifests/``). The service never
guesses preprocessing, sizes or thresholds from graph shapes or node names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.core.openset import ImpostorTail, TailPoint
from app.errors import ManifestInvalid, ModelChecksumMismatch, ModelNotFound

_HASH_CHUNK = 1 << 20


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Preprocess(_Frozen):
    """Pixel normalisation: ``(pixel - mean) / std`` per channel, in ``color_order``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color_order: Literal["RGB", "BGR"]


class DetectorInput(_Frozen):
    name: str
    # How the network input size is chosen for a photo:
    #   "fixed":    always size (W, H), photo letterboxed into it;
    #   "adaptive": the photo's own size, never upscaled, long side capped at
    #               max_side, rounded up to a multiple of stride.
    size_policy: Literal["fixed", "adaptive"]
    size: tuple[int, int] = (640, 640)
    max_side: int = 640
    min_side: int = 0
    stride: int = 32


class DetectorSpec(_Frozen):
    strides: tuple[int, ...] = (8, 16, 32)
    anchors_per_location: int = 2
    landmarks: int = 5
    score_threshold: float = Field(0.5, gt=0, lt=1)
    nms_iou: float = Field(0.4, gt=0, lt=1)


class RecognizerInput(_Frozen):
    name: str
    size: tuple[int, int] = (112, 112)
    # Faces per session.run. Bounds peak memory on crowd photos; must be 1 for a
    # dynamically quantised graph run as is, whose activation scales are computed
    # over the whole batch (a face's embedding would depend on its neighbours).
    max_batch: int = Field(32, ge=1)


class MeasuredPoint(_Frozen):
    threshold: float
    far: float
    tar: float


class HeldOutPoint(_Frozen):
    far: float  # pooled over the folds
    fold_fars: list[float]
    tar: float


class HeldOutEstimate(_Frozen):
    folds: int = Field(ge=2)
    split: str
    points: dict[str, HeldOutPoint]


class CalibrationCheck(_Frozen):
    """Thresholds of a small fixed sample (the first pairs of each LFW fold): recomputing
    them tells whether the thresholds above still describe the pipeline (tests/bench)."""

    lfw_limit: int = Field(gt=0)
    images: int
    impostor_pairs: int
    by_far: dict[str, float]


class CalibrationRecord(_Frozen):
    """How ``thresholds`` were measured: the committed command that regenerates them, the
    data, the pipeline, and in-sample and held-out figures at each FAR of ``by_far``."""

    command: str
    date: str
    commit: str | None = None
    data: str
    detector: str  # model ids the service reported (/ready)
    recognizer: str
    images: int
    images_without_face: int
    impostor_pairs: int
    genuine_pairs: int
    lfw_accuracy: float | None = None
    in_sample: dict[str, MeasuredPoint]
    held_out: HeldOutEstimate
    check: CalibrationCheck
    note: str | None = None


class Thresholds(_Frozen):
    """Similarity thresholds (cosine of L2-normalised embeddings)."""

    match: float = Field(ge=-1, le=1)
    far: float | None = Field(None, description="false-accept rate `match` was chosen for")
    calibration: CalibrationRecord | str | None = Field(
        None, description="how and on what data it was measured (a record, or prose)"
    )
    by_far: dict[str, float] = Field(default_factory=dict)


class TailFit(_Frozen):
    """The exponential tail beyond the measured quantiles: ``P(S >= t) = far x
    exp(-(t - threshold) / scale)``, fitted to the ``exceedances`` scores above ``threshold``."""

    kind: Literal["exponential"]
    far: float = Field(gt=0, lt=1)
    threshold: float = Field(ge=-1, le=1)
    scale: float = Field(gt=0)
    exceedances: int = Field(gt=0)


class ImpostorTailRecord(_Frozen):
    """The recognizer's impostor similarity distribution far into its upper tail, and how it
    was measured (``bench/impostor_tail.py``): open-set identification derives its
    thresholds from it (``app.core.openset``). Absent: identification uses ``match``."""

    command: str
    date: str
    commit: str | None = None
    data: str
    detector: str
    recognizer: str  # the model id measured; the service uses the tail only when it is its own
    images: int
    identities: int
    pairs: int = Field(gt=0)
    quantiles: dict[str, float] = Field(min_length=1, description="far -> threshold, measured")
    exceedances: dict[str, int] = Field(default_factory=dict)
    fit: TailFit
    top_scores: list[float] = Field(default_factory=list)
    check: dict[str, object] | None = None

    def tail(self) -> ImpostorTail:
        """The tail as ``app.core.openset`` reads it (validated: monotone quantiles)."""
        points = tuple(
            TailPoint(float(far), threshold) for far, threshold in self.quantiles.items()
        )
        return ImpostorTail(points=points, scale=self.fit.scale, pairs=self.pairs)

    @model_validator(mode="after")
    def _quantiles_form_a_tail(self) -> ImpostorTailRecord:
        self.tail()  # ValueError -> ValidationError: the manifest is refused
        return self


class ImportSteps(_Frozen):
    """Graph rewrites applied when the file is loaded (the file on disk is untouched)."""

    dequantize: bool = False
    fix_dynamic_shapes: bool = True


class Augment(_Frozen):
    """Test-time augmentation; part of the embedding space (see ``model_id``)."""

    # Embedding = normalised sum of the embeddings of the crop and its mirror image.
    flip: bool = False
    # "mirror": before alignment, each face's landmarks are averaged with those the
    # detector finds in the mirrored photo (one more detector pass per photo, no more
    # recognizer passes). Removes the detector's left/right bias from the crop.
    landmarks: Literal["single", "mirror"] = "single"


class Source(_Frozen):
    url: str | None = None
    archive_sha256: str | None = None
    archive_member: str | None = None
    pack: str | None = None
    notes: str | None = None


# The model class that runs a file (``app.inference.loader``), one per output layout.
# Manifests written before the field existed get their kind's only family.
ModelFamily = Literal["scrfd", "arcface"]
_DEFAULT_FAMILY: dict[str, ModelFamily] = {"detector": "scrfd", "recognizer": "arcface"}


class ModelManifest(_Frozen):
    name: str
    kind: Literal["detector", "recognizer"]
    family: ModelFamily
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: DetectorInput | RecognizerInput
    preprocess: Preprocess
    detector: DetectorSpec | None = None
    embedding_dim: int | None = Field(None, gt=0)
    thresholds: Thresholds | None = None
    impostor_tail: ImpostorTailRecord | None = None
    import_steps: ImportSteps = ImportSteps()
    augment: Augment = Augment()
    licence: str
    source: Source = Source()
    base_model: str | None = None
    training: dict[str, object] | None = None
    metrics: dict[str, object] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_family(cls, values: object) -> object:
        if isinstance(values, dict) and "family" not in values:
            kind = values.get("kind")
            if isinstance(kind, str) and kind in _DEFAULT_FAMILY:
                return {**values, "family": _DEFAULT_FAMILY[kind]}
        return values

    @model_validator(mode="after")
    def _kind_fields_present(self) -> ModelManifest:
        if _DEFAULT_FAMILY[self.kind] != self.family:
            raise ValueError(f"family {self.family!r} is not a {self.kind} family")
        if self.kind == "detector":
            if not isinstance(self.input, DetectorInput) or self.detector is None:
                raise ValueError("a detector manifest needs a detector input and `detector`")
        else:
            if not isinstance(self.input, RecognizerInput):
                raise ValueError("a recognizer manifest needs a recognizer input")
            if self.embedding_dim is None or self.thresholds is None:
                raise ValueError("a recognizer manifest needs `embedding_dim` and `thresholds`")
        return self

    @property
    def model_id(self) -> str:
        """Identity of the embedding space: name, file hash and import steps."""
        suffix = "+dq" if self.import_steps.dequantize else ""
        suffix += "+flip" if self.augment.flip else ""
        suffix += "+mirrorlm" if self.augment.landmarks == "mirror" else ""
        return f"{self.name}@{self.sha256[:16]}{suffix}"


def impostor_tail_of(manifest: ModelManifest) -> ImpostorTail | None:
    """The manifest's impostor tail when it was measured on this very embedding space
    (the record's recognizer is the manifest's model id), else None."""
    record = manifest.impostor_tail
    if record is None or record.recognizer != manifest.model_id:
        return None
    return record.tail()


def load_manifest(path: Path) -> ModelManifest:
    """Read and validate a manifest file; errors say which file and what is wrong."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestInvalid(f"manifest not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestInvalid(f"manifest {path} is not valid JSON: {exc}") from exc
    try:
        return ModelManifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestInvalid(f"manifest {path} is invalid: {exc}") from exc


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model_file(manifest: ModelManifest, search_dirs: list[Path]) -> Path:
    """Find the manifest's file in ``search_dirs`` and verify its sha256."""
    candidates = [Path(manifest.file)] if Path(manifest.file).is_absolute() else []
    candidates += [directory / manifest.file for directory in search_dirs]
    for candidate in candidates:
        if candidate.is_file():
            actual = file_sha256(candidate)
            if actual != manifest.sha256:
                raise ModelChecksumMismatch(
                    f"{candidate}: sha256 is {actual}, manifest {manifest.name!r} expects "
                    f"{manifest.sha256}; the file is corrupt or not the model the manifest "
                    "describes",
                    path=str(candidate),
                )
            return candidate
    searched = ", ".join(str(d) for d in search_dirs) or "(no directories)"
    raise ModelNotFound(
        f"model file {manifest.file!r} of manifest {manifest.name!r} not found in {searched}; "
        "set FACEREC_MODELS_DIR or run `facerec models fetch`",
        file=manifest.file,
    )
