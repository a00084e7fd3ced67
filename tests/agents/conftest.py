import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The loopback OpenAI server is shared with the planner tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "planner"))

from openai_loopback import LoopbackOpenAI  # noqa: E402


@pytest.fixture
def llm() -> Iterator[LoopbackOpenAI]:
    server = LoopbackOpenAI().start()
    yield server
    server.stop()
