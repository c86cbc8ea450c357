"""Settings of prescreen, read from the environment (prefix ``PRESCREEN_``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All tunables in one place.

    Every field can be set as ``PRESCREEN_<FIELD>`` in the environment or in a ``.env`` file.
    """

    model_config = SettingsConfigDict(env_prefix="PRESCREEN_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("../shared/data"), description="Folder of labelled data sets")
    home: Path = Field(Path(".prescreen"), description="State: model store, caches, database")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite under home")
    host: str = "127.0.0.1"
    port: int = 3000
    dicom_ae_title: str = "PRESCREEN"
    dicom_port: int = 11112
    max_upload_bytes: int = Field(200 * 1024 * 1024, description="Largest accepted upload")
    max_image_pixels: int = Field(100_000_000, description="Largest accepted image (all frames)")
    max_image_frames: int = Field(512, description="Most frames of one image study")
    explanation_ttl_hours: float = Field(24.0, description="Explanation overlays are deleted after this")
    target_metric: str = "accuracy"
    target_threshold: float = 0.95
    bootstrap_resamples: int = 1000
    onnx_threads: int = 2

    @property
    def bentoml_home(self) -> Path:
        """BentoML's home (model store) lives under the prescreen home."""
        return self.home / "bentoml"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; also points BentoML at its home and turns tracking off."""
    settings = Settings()
    settings.home = settings.home.expanduser().resolve()
    settings.data_dir = settings.data_dir.expanduser().resolve()
    configure_bentoml_env(settings)
    return settings


def configure_bentoml_env(settings: Settings) -> None:
    """Set BentoML's environment before it is imported: project-local home, no tracking."""
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    os.environ["BENTOML_HOME"] = str(settings.bentoml_home)
