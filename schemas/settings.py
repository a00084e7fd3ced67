"""Configuration: one pydantic-settings model per service.

Each model reads, from strongest to weakest: values given by the caller (CLI flags), environment
variables (`FLOWACT_<SECTION>_<FIELD>`), its section of a YAML file (`--config` or
`FLOWACT_CONFIG`), and its defaults. Build them once in `main()` and pass them down.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from flowact.schemas.streams import RETENTION

CONFIG_ENV = "FLOWACT_CONFIG"
_config_file: ContextVar[Path | None] = ContextVar("flowact_config_file", default=None)


class _YamlSection(PydanticBaseSettingsSource):
    """The settings class's section of the YAML config file, if there is one."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = _config_file.get() or (Path(p) if (p := os.environ.get(CONFIG_ENV)) else None)
        self._values: dict[str, Any] = {}
        if path is not None:
            document = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(document, dict):
                raise ValueError(f"{path}: a FlowAct config is a map of sections")
            section = document.get(settings_cls.section, {})  # type: ignore[attr-defined]
            if not isinstance(section, dict):
                raise ValueError(f"{path}: section {settings_cls.section!r} is not a map")  # type: ignore[attr-defined]
            self._values = section

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class Settings(BaseSettings):
    """Base of every service's settings; `section` names its YAML section and env prefix."""

    section: ClassVar[str]
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSection(settings_cls)

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any):  # noqa: ANN206
        """Build from `config` (YAML), the environment and `overrides`; None overrides are unset."""
        token = _config_file.set(config)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        finally:
            _config_file.reset(token)


class LogSettings(Settings):
    section: ClassVar[str] = "log"
    model_config = SettingsConfigDict(env_prefix="FLOWACT_LOG_")

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class BusSettings(Settings):
    section: ClassVar[str] = "bus"
    model_config = SettingsConfigDict(env_prefix="FLOWACT_BUS_")

    url: str = Field(
        default="redis://127.0.0.1:6379/0", description="redis://host:port/db or memory://[name]"
    )
    block_ms: int = Field(default=1000, gt=0, description="XREADGROUP BLOCK time")
    max_deliveries: int = Field(default=5, gt=0, description="deliveries before dead-lettering")
    claim_idle_ms: int = Field(default=30_000, gt=0, description="idle time before reclaiming")
    video_maxlen: int = Field(
        default=RETENTION["video"], gt=0, description="video entries kept per session"
    )
    events_maxlen: int = Field(
        default=RETENTION["events"], gt=0, description="events kept per session"
    )


class RendererSettings(Settings):
    section: ClassVar[str] = "renderer"
    model_config = SettingsConfigDict(env_prefix="FLOWACT_RENDERER_")

    preset: str = Field(default="demo", description="tiny, demo or paper-480p")
    device: str = Field(default="cpu", description="torch device: cpu, cuda, cuda:1, ...")
    weights: str = Field(
        default="shipped",
        description="checkpoint directory; shipped: the project's trained checkpoint of the "
        "preset when there is one; random: random weights",
    )
    text_encoder: Literal["auto", "minilm", "hash"] = "auto"
    accel: Literal["default", "baseline", "bf16", "optimized", "sessions"] = Field(
        default="default",
        description="GPU optimizations (renderer/accel.py): optimized = bf16, torch.compile, CUDA "
        "graphs, FP8, decode stream, compiled VAE decoder; sessions = batched forwards of "
        "concurrent sessions",
    )
    worker: str = Field(default="", description="consumer name; empty: host-pid")
    capacity: int = Field(default=1, gt=0, description="sessions this worker renders at once")
    pace: float = Field(default=1.0, ge=0, description="speed vs real time; 0: as fast as it can")
    lead_chunks: int = Field(
        default=0, ge=0, description="chunks published ahead of real time (viewers buffer anyway)"
    )
    refine_every: int = Field(default=8, ge=0, description="memory refinement period; 0: off")
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    seed: int = Field(default=0, ge=0)
