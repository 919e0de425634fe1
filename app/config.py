"""Service configuration: one Settings object, read from FACEREC_* environment variables.

Only the composition root (``app.main``, ``app.cli``) reads Settings; everything
else receives plain values through its constructor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1 << 20


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEREC_", frozen=True, extra="ignore")

    # --- models --------------------------------------------------------------------
    models_dir: Path = Field(Path("models-data"), description="folder holding the .onnx files")
    catalog_dir: Path | None = Field(None, description="manifest catalog (default: repo models/)")
    detector: str = Field("scrfd_500m", description="catalog name or manifest path")
    recognizer: str = Field("w600k_mbf_int8", description="catalog name or manifest path")
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="onnxruntime execution providers in order, comma separated",
    )

    # --- gallery -------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="gallery folder (SQLite + FAISS)")
    store_aligned_crops: bool = Field(True, description="keep 112x112 crops to re-embed later")

    # --- compute -------------------------------------------------------------------
    inference_workers: int = Field(
        0, ge=0, description="requests running decode/detect/align at once, 0 = one per core"
    )
    intra_op_threads: int = Field(0, ge=0, description="threads per session, 0 = auto")
    recognizer_runners: int = Field(
        1,
        ge=1,
        description="recognizer batches running at once, each on cores / runners threads: "
        "more runners raise throughput under load on a CPU and cost single-request latency",
    )

    # --- limits and policies ----------------------------------------------------------
    max_image_bytes: int = Field(20 * MIB, ge=1024)
    max_image_pixels: int = Field(50_000_000, ge=10_000)
    max_images_per_enroll: int = Field(20, ge=1)
    max_request_bytes: int = Field(
        50 * MIB, ge=1024, description="whole request body; larger ones get 413 before parsing"
    )
    max_faces_per_image: int = Field(
        32, ge=1, description="faces processed per photo: the largest ones, others ignored"
    )
    inference_queue: int = Field(
        16, ge=0, description="requests waiting for an inference worker before a fast 503"
    )
    min_face_size: int = Field(32, ge=1, description="enroll: shorter box side, pixels")
    min_det_score: float = Field(0.6, ge=0, le=1, description="enroll: detector confidence")
    match_threshold: float | None = Field(None, ge=-1, le=1, description="override manifest")
    default_top_k: int = Field(5, ge=1)
    max_top_k: int = Field(100, ge=1)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field("json", description="json: one object a line")

    # --- access ------------------------------------------------------------------------
    auth: bool = Field(True, description="require API keys (X-API-Key); off/false disables")
    rate_limit_per_second: float = Field(
        20.0, ge=0, description="requests per second per API key, sustained; 0 = unlimited"
    )
    rate_limit_burst: int = Field(40, ge=1, description="requests per API key in a burst")

    # --- live recognition (WebSocket /stream) -----------------------------------------
    stream_max_concurrent: int = Field(
        4, ge=1, description="open /stream connections; more are closed with code 1013"
    )
    stream_max_frame_bytes: int = Field(
        2 * MIB, ge=1024, description="per frame message; larger closes with code 1009"
    )
    stream_max_frame_pixels: int = Field(
        1920 * 1080, ge=10_000, description="per frame; larger closes with code 1009"
    )
    stream_detect_size: int = Field(
        320, ge=0, description="detector input long side for frames; 0 = the manifest's policy"
    )
    stream_reid_interval: int = Field(
        10, ge=1, description="processed frames between re-identifications of a named face"
    )
    stream_max_recognitions_per_frame: int = Field(
        1, ge=0, description="faces run through the recognizer per frame; 0 = no cap"
    )
    stream_vote_window: int = Field(5, ge=1, description="recent recognitions a name is voted on")
    stream_min_votes: int = Field(2, ge=1, description="agreeing recognitions a name needs")
    stream_max_missed_frames: int = Field(
        5, ge=0, description="processed frames a face may go undetected and keep its track"
    )

    # --- abuse resistance (docs/security.md) -------------------------------------------
    body_timeout_s: float = Field(
        60.0, gt=0, description="whole request body must arrive within this; else 408"
    )
    max_request_pixels: int = Field(
        100_000_000, ge=10_000, description="sum of declared pixels of a request's images"
    )
    inference_slots_per_key: int = Field(
        0, ge=0, description="admitted inference requests per API key; 0 = half of the slots"
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="on SIGTERM, seconds open requests get before they are cut"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="request line and headers must arrive within this"
    )

    # --- live recognition: access, identity changes, unknown faces, cameras ----------------
    stream_max_per_key: int = Field(
        2, ge=1, description="open /stream connections per API key; more close with 1008"
    )
    stream_idle_timeout_s: float = Field(
        30.0, gt=0, description="a stream that sends no frame this long closes with 1001"
    )
    stream_key_check_s: float = Field(
        1.0, gt=0, description="seconds between re-checks of an idle stream's key (revocation)"
    )
    stream_send_timeout_s: float = Field(
        10.0, gt=0, description="an answer the client does not take this long closes the stream"
    )
    stream_instant_margin: float | None = Field(
        0.2, ge=0, description="one match this far above the threshold names a face at once"
    )
    stream_split_similarity: float = Field(
        0.92, ge=-1, le=1, description="appearance similarity under which a face is re-checked"
    )
    stream_unknown_ttl_s: float = Field(
        600.0, gt=0, description="an unknown face's id and crops are kept this long unseen"
    )
    stream_unknown_capacity: int = Field(
        256, ge=1, description="unknown faces kept per process (least recently seen go first)"
    )
    stream_unknown_crops: int = Field(4, ge=1, description="best crops kept per unknown face")
    stream_max_cameras: int = Field(
        32, ge=1, description="distinct camera names in /metrics; later ones are 'other'"
    )

    # --- PostgreSQL gallery and keys, shared by replicas (unset: embedded, in data_dir) -------
    database_url: SecretStr | None = Field(
        None, description="postgresql://user:password@host:port/db; unset = embedded gallery"
    )
    database_pool_size: int = Field(
        8, ge=1, description="most connections this process opens to PostgreSQL (plus one)"
    )
    database_timeout_s: float = Field(
        2.0, gt=0, description="wait for a connection this long, then a 503 database_unavailable"
    )
    database_statement_timeout_s: float = Field(
        30.0, ge=0, description="cancel a statement running longer (503); 0 = no limit"
    )
    database_startup_timeout_s: float = Field(
        30.0, gt=0, description="at start-up, wait this long for the database, then exit 1"
    )
    database_ef_search: int = Field(
        100, ge=1, le=1000, description="HNSW candidates per search (pgvector hnsw.ef_search)"
    )

    # --- enrollment quality (app/core/quality.py) ----------------------------------------
    min_quality: float = Field(
        0.03,
        ge=0,
        le=1,
        description="enroll: face quality score needed (size, sharpness, pose, confidence)",
    )

    # --- inference engine and scheduling (issue 9) -----------------------------------
    engine: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto",
        description="auto: OpenVINO when installed and only the CPU provider is asked for, "
        "else onnxruntime (CUDA/TensorRT)",
    )
    openvino_devices: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CPU"],
        description="OpenVINO devices, comma separated; every one is required",
    )
    openvino_precision: Literal["auto", "f32", "bf16"] = Field(
        "auto",
        description="OpenVINO CPU precision: auto = the recognizer in bf16 where the CPU has "
        "it natively (AVX512-BF16, AMX; 1.3-1.8x faster), the detector in f32; bf16 = both "
        "(refused on a CPU without it); f32 = both",
    )
    batch_max_size: int = Field(
        0, ge=0, description="recognizer faces per batch across requests, 0 = the manifest's"
    )
    batch_max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        description="how long a batch waits for more faces; 0 = only what is already queued",
    )

    # --- open-set identification (app/core/openset.py, docs/openset.md) ------------------
    target_fpir: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description="identify: share of people not enrolled who may be matched to somebody; "
        "the threshold is derived from it per collection and size (collections may override)",
    )
    lookalike_max_faces: int = Field(
        100_000, ge=1, description="look-alike report: faces searched per collection at most"
    )
    lookalike_keep: int = Field(1000, ge=1, description="look-alike report: subject pairs kept")
    lookalike_refresh_s: float = Field(
        300.0,
        gt=0,
        description="identify's look-alike flags: a changed collection's report is rescanned "
        "in the background at most this often",
    )
    # --- model swap (POST /admin/models/activate; docs/training.md) ---
    swap_batch_size: int = Field(
        32, ge=1, le=1024, description="model swap: crops re-embedded per step"
    )
    swap_pause_ms: float = Field(
        20.0, ge=0, le=60_000, description="model swap: pause between steps, for live traffic"
    )

    @model_validator(mode="before")
    @classmethod
    def _split_providers(cls, values: dict[str, object]) -> dict[str, object]:
        for key in ("providers", "openvino_devices"):
            listed = values.get(key)
            if isinstance(listed, str):
                values[key] = [p.strip() for p in listed.split(",") if p.strip()]
        return values

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url_or_none(cls, value: object) -> object:
        """Empty means unset: the embedded gallery. (The URL is checked where it is
        used, so that no error message ever repeats its password.)"""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is None or (isinstance(text, str) and not text.strip()):
            return None
        return value

    @model_validator(mode="after")
    def _stream_votes_fit_window(self) -> Settings:
        if self.stream_min_votes > self.stream_vote_window:
            raise ValueError(
                f"stream_min_votes ({self.stream_min_votes}) cannot exceed "
                f"stream_vote_window ({self.stream_vote_window})"
            )
        return self

    def resolved_inference_workers(self) -> int:
        """0 = one worker per core: each runs one request's CPU stages at a time."""
        return self.inference_workers or available_cores()

    def resolved_intra_op_threads(self) -> int:
        """Cores divided among the concurrent inference workers, so they never oversubscribe."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, available_cores() // self.resolved_inference_workers())

    def resolved_inference_slots_per_key(self) -> int:
        """Admission slots one key may hold: half of all of them (rounded up) by default, so
        a second tenant always finds room."""
        slots = self.resolved_inference_workers() + self.inference_queue
        return min(slots, self.inference_slots_per_key or (slots + 1) // 2)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)
