"""`OpenAIPlanner`: a multimodal chat model plans behaviors, as in the paper's section 2.6.

Each call sends the reference image (a data URL), the window's speech and the agent's state to any
OpenAI-compatible `/v1/chat/completions` endpoint and asks for an answer in a JSON schema
(`response_format` json_schema). The answer is validated by pydantic; a timeout, an HTTP error,
malformed JSON or an answer outside the schema is logged and the window is planned by the
heuristic planner instead, so the avatar never waits on the model.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowact.planner.base import PlanRequest, prompt, select
from flowact.planner.heuristic import HeuristicPlanner
from flowact.schemas import timebase as tb
from flowact.schemas.agent_settings import PlannerSettings
from flowact.schemas.messages import BehaviorPrompt, Channel, Overlap

try:
    import openai
except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "OpenAIPlanner needs the 'openai' package: pip install flowact[llm]", name=err.name
    ) from err

log = structlog.get_logger(__name__)

MS_PER_FRAME = 1000 // tb.FPS
IMAGE_SIDE = 512  # the reference image is scaled down to this before it is sent

SYSTEM_PROMPT = """\
You direct the body language of a video avatar in a live conversation. For a short window of the \
conversation you get the avatar's state (idle, listening, thinking, speaking), the words spoken \
in the window, and the avatar's reference image. Answer with the behaviors that should start in \
the window: natural, varied, matched to the words, the state and the person in the image.
Channels: posture (stance of the whole body), gesture (arms and hands), face (expression), gaze \
(eyes and head: nods, glances). Each behavior is a short description in the third person \
present, such as "waves with the right hand" or "nods slowly", with offset_ms from the window's \
start (within the window) and duration_ms. Use few behaviors: one to three per window, none when \
nothing fits. Do not repeat the same motion in every window."""


class PlannedBehavior(BaseModel):
    """One behavior of the model's answer; times in milliseconds from the window's start."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=120)
    channel: Channel
    offset_ms: int = Field(ge=0)
    duration_ms: int = Field(gt=0, le=10_000)
    overlap: Overlap


class Plan(BaseModel):
    """The model's answer."""

    model_config = ConfigDict(extra="forbid")

    behaviors: list[PlannedBehavior] = Field(max_length=8)


# Bounds such as maxLength are left out of the schema sent: several servers reject them in
# strict mode. pydantic checks them on the way back in.
_UNSENT = {"title", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "maxItems"}


def _wire_schema(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                {n: _wire_schema(s) for n, s in v.items()} if k == "properties" else _wire_schema(v)
            )
            for k, v in node.items()
            if k not in _UNSENT
        }
    if isinstance(node, list):
        return [_wire_schema(v) for v in node]
    return node


RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "behavior_plan",
        "schema": _wire_schema(Plan.model_json_schema()),
        "strict": True,
    },
}


class PlanError(ValueError):
    """The model's answer could not be used."""


class OpenAIPlanner:
    """Behaviors from an OpenAI-compatible multimodal chat model; heuristic on any failure."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 4.0,
        retries: int = 1,
        max_prompts: int = 4,
        fallback: HeuristicPlanner | None = None,
    ) -> None:
        self.model = model
        self.max_prompts = max_prompts
        self.fallback = fallback or HeuristicPlanner(max_prompts=max_prompts)
        # The client retries connection errors, 408/429/5xx and timeouts with backoff; the outer
        # limit below bounds the whole call however the retries go.
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=retries
        )
        self._deadline_s = timeout_s * (retries + 1) + 1.0
        self._image_url: tuple[bytes, str] | None = None
        self.failures = 0

    @classmethod
    def from_settings(cls, settings: PlannerSettings) -> OpenAIPlanner:
        key = settings.api_key.get_secret_value() if settings.api_key else None
        return cls(
            base_url=settings.base_url,
            model=settings.model,
            api_key=key,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            max_prompts=settings.max_prompts,
            fallback=HeuristicPlanner(seed=settings.seed, max_prompts=settings.max_prompts),
        )

    async def plan(self, request: PlanRequest) -> list[BehaviorPrompt]:
        try:
            answer = await asyncio.wait_for(self._ask(request), self._deadline_s)
            return self._prompts(request, parse_plan(answer))
        except Exception as err:  # noqa: BLE001 - any failure of the model means: fall back
            # Besides OpenAIError and timeouts, a server that answers a non-JSON body makes the
            # client raise JSONDecodeError, and odd bodies other parsing errors.
            self.failures += 1
            log.error(
                "planner model failed; heuristic plan instead",
                error=f"{type(err).__name__}: {err}"[:300],
                window=request.start_frame,
            )
            return self.fallback.plan_now(request)

    async def close(self) -> None:
        await self._client.close()

    async def _ask(self, request: PlanRequest) -> str:
        completion = await self._client.chat.completions.create(
            model=self.model,
            messages=self._messages(request),  # type: ignore[arg-type]
            response_format=RESPONSE_FORMAT,  # type: ignore[arg-type]
            temperature=0.7,
            max_tokens=400,
        )
        if not completion.choices:
            raise PlanError("the answer has no choices")
        content = completion.choices[0].message.content
        if not content:
            raise PlanError("the answer is empty")
        return content

    def _messages(self, request: PlanRequest) -> list[dict[str, Any]]:
        window = {
            "state": request.state,
            "speaker": request.speaker,
            "words": request.text,
            "window_ms": request.frames * MS_PER_FRAME,
            "start_of_turn": request.first,
            "end_of_turn": request.last,
        }
        content: list[dict[str, Any]] = [{"type": "text", "text": json.dumps(window)}]
        if request.image is not None:
            content.append({"type": "image_url", "image_url": {"url": self._data_url(request)}})
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def _data_url(self, request: PlanRequest) -> str:
        assert request.image is not None
        if self._image_url is None or self._image_url[0] is not request.image:
            self._image_url = (request.image, image_data_url(request.image))
        return self._image_url[1]

    def _prompts(self, request: PlanRequest, plan: Plan) -> list[BehaviorPrompt]:
        window_ms = request.frames * MS_PER_FRAME
        ranked = [
            prompt(
                request,
                b.text,
                b.channel,
                # A behavior placed after the window is pulled to its last frame, not dropped:
                # the model meant it for this stretch of speech.
                min(b.offset_ms, window_ms - 1) // MS_PER_FRAME,
                -(-b.duration_ms // MS_PER_FRAME),
                b.overlap,
            )
            for b in plan.behaviors
        ]
        return select(ranked, self.max_prompts)


def parse_plan(answer: str) -> Plan:
    """The model's JSON answer as a `Plan`; PlanError naming what is wrong otherwise."""
    try:
        return Plan.model_validate_json(answer)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        raise PlanError(f"{where}: {first['msg']} ({len(err.errors())} problem(s))") from None


def image_data_url(image: bytes, max_side: int = IMAGE_SIDE) -> str:
    """A `data:` URL of the image, scaled down to `max_side` and re-encoded as JPEG when larger."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as img:
        if max(img.size) <= max_side:
            mime = "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"
            return f"data:{mime};base64,{base64.b64encode(image).decode()}"
        img.thumbnail((max_side, max_side))
        out = io.BytesIO()
        img.convert("RGB").save(out, format="JPEG", quality=85)
    return f"data:image/jpeg;base64,{base64.b64encode(out.getvalue()).decode()}"
