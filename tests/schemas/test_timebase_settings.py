from pathlib import Path

import pytest
from pydantic import ValidationError

from flowact.schemas import timebase as tb
from flowact.schemas.settings import BusSettings, LogSettings


def test_clock_constants_agree() -> None:
    assert tb.FRAMES_PER_CHUNK == 12 and tb.SAMPLES_PER_CHUNK == 7_680
    assert tb.CHUNK_SECONDS == pytest.approx(0.48)
    assert tb.chunk_samples(2) == range(15_360, 23_040)
    assert tb.chunk_frames(2) == range(24, 36)
    assert tb.chunk_of_sample(7_679) == 0 and tb.chunk_of_sample(7_680) == 1
    assert tb.chunk_of_frame(11) == 0 and tb.chunk_of_frame(12) == 1


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "flowact.yaml"
    config.write_text(
        "bus:\n  url: redis://127.0.0.1:6379/2\n  block_ms: 200\nlog:\n  format: json\n"
    )
    assert BusSettings.load(config).url == "redis://127.0.0.1:6379/2"
    monkeypatch.setenv("FLOWACT_BUS_BLOCK_MS", "300")
    bus = BusSettings.load(config)
    assert bus.block_ms == 300 and bus.url.endswith("/2")
    assert BusSettings.load(config, url="memory://x", block_ms=None).url == "memory://x"
    assert LogSettings.load(config).format == "json"
    assert BusSettings.load().url == "redis://127.0.0.1:6379/0"


def test_settings_reject_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "flowact.yaml"
    config.write_text("bus:\n  ulr: redis://x\n")
    with pytest.raises(ValidationError, match="ulr"):
        BusSettings.load(config)
