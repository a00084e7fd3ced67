from collections.abc import Iterator

import pytest
from openai_loopback import LoopbackOpenAI


@pytest.fixture
def llm() -> Iterator[LoopbackOpenAI]:
    server = LoopbackOpenAI().start()
    yield server
    server.stop()
