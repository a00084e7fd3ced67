"""`OpenAIResponder`: replies from any OpenAI-compatible chat endpoint.

OpenAI itself, or a local server that speaks `/v1/chat/completions` (vLLM, llama.cpp's server,
Ollama, LM Studio...): set the base URL, the model and, if the server wants one, a key.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from flowact.agents.base import MissingDependency, ResponderError, Turn, recent
from flowact.schemas.agent_settings import AgentSettings

try:
    import openai
except ModuleNotFoundError as err:
    raise MissingDependency(
        "OpenAIResponder needs the 'openai' package: pip install flowact[llm]", name=err.name
    ) from err

# What a text-to-speech voice should not read out: markdown emphasis, headings, bullets, code.
UNSPEAKABLE = re.compile(r"[*_`#>]+|^\s*[-•]\s+", re.MULTILINE)


class OpenAIResponder:
    """Chat completions with a system prompt and the recent conversation."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        system_prompt: str = "Answer briefly, in plain spoken sentences.",
        timeout_s: float = 8.0,
        retries: int = 1,
        max_tokens: int = 160,
        history_turns: int = 16,
    ) -> None:
        self.model = model
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.history_turns = history_turns
        # The client retries connection errors, 408/429/5xx and timeouts with backoff; the outer
        # limit bounds the whole reply however the retries go.
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=retries
        )
        self._deadline_s = timeout_s * (retries + 1) + 1.0

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> OpenAIResponder:
        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return cls(
            base_url=settings.llm_base_url,
            model=settings.llm_model,
            api_key=key,
            system_prompt=settings.system_prompt,
            timeout_s=settings.llm_timeout_s,
            retries=settings.llm_retries,
            max_tokens=settings.llm_max_tokens,
            history_turns=settings.history_turns,
        )

    async def reply(self, history: Sequence[Turn]) -> str:
        messages = [{"role": "system", "content": self.system_prompt}]
        messages += [
            {"role": t.role, "content": t.text} for t in recent(history, self.history_turns)
        ]
        try:
            completion = await asyncio.wait_for(
                self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=self.max_tokens,
                    temperature=0.8,
                ),
                self._deadline_s,
            )
            content = completion.choices[0].message.content if completion.choices else None
        except (openai.OpenAIError, TimeoutError, ValueError, AttributeError) as err:
            # ValueError: a body that is not JSON; AttributeError: JSON of another shape.
            raise ResponderError(f"{type(err).__name__}: {err}"[:300]) from err
        text = UNSPEAKABLE.sub("", content or "").strip()
        if not text:
            raise ResponderError("the model answered nothing")
        return text

    async def close(self) -> None:
        await self._client.close()
