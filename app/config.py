"""Service configuration: one Settings object, read from FACEREC_* environment variables.

Only the composition root (``app.main``, ``app.cli``) reads Settings; everything
else receives plain values through its constructor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator
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
    inference_workers: int = Field(1, ge=1, description="requests running inference at once")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads per session, 0 = auto")

    # --- limits and policies ----------------------------------------------------------
    max_image_bytes: int = Field(20 * MIB, ge=1024)
    max_image_pixels: int = Field(50_000_000, ge=10_000)
    max_images_per_enroll: int = Field(20, ge=1)
    min_face_size: int = Field(32, ge=1, description="enroll: shorter box side, pixels")
    min_det_score: float = Field(0.6, ge=0, le=1, description="enroll: detector confidence")
    match_threshold: float | None = Field(None, ge=-1, le=1, description="override manifest")
    default_top_k: int = Field(5, ge=1)
    max_top_k: int = Field(100, ge=1)
    log_level: str = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _split_providers(cls, values: dict[str, object]) -> dict[str, object]:
        providers = values.get("providers")
        if isinstance(providers, str):
            values["providers"] = [p.strip() for p in providers.split(",") if p.strip()]
        return values

    def resolved_intra_op_threads(self) -> int:
        """Cores divided among the concurrent inference workers, so they never oversubscribe."""
        if self.intra_op_threads:
            return self.intra_op_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // self.inference_workers)
