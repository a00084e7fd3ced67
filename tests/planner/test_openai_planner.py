import base64
import io
import time

from openai_loopback import LoopbackOpenAI
from PIL import Image
from speech_like import bursts

from flowact.planner.base import PlanRequest
from flowact.planner.heuristic import HeuristicPlanner
from flowact.planner.openai import OpenAIPlanner, image_data_url


def _png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 120, 40)).save(out, format="PNG")
    return out.getvalue()


IMAGE = _png(64)
REQUEST = PlanRequest(
    start_frame=500,
    frames=37,
    state="speaking",
    speaker="agent",
    text="Hello! Welcome to the show.",
    pcm=bursts([("v", 20), ("s", 5), ("v", 10)]),
    first=True,
    image=IMAGE,
)
GOOD = {
    "behaviors": [
        {
            "text": "waves with both hands",
            "channel": "gesture",
            "offset_ms": 400,
            "duration_ms": 1500,
            "overlap": "replace",
        },
        {
            "text": "smiles brightly",
            "channel": "face",
            "offset_ms": 0,
            "duration_ms": 2000,
            "overlap": "overlay",
        },
        {
            "text": "nods",
            "channel": "gaze",
            "offset_ms": 9000,  # past the window's end
            "duration_ms": 500,
            "overlap": "replace",
        },
    ]
}


def _planner(llm: LoopbackOpenAI, **kw) -> OpenAIPlanner:
    options = {"timeout_s": 2.0, "retries": 0, "fallback": HeuristicPlanner(seed=5)} | kw
    return OpenAIPlanner(base_url=llm.base_url, model="vision-model", api_key="k", **options)


async def test_a_good_plan_becomes_timed_prompts(llm: LoopbackOpenAI) -> None:
    llm.answer_json(GOOD)
    planner = _planner(llm)
    prompts = await planner.plan(REQUEST)
    assert planner.failures == 0
    got = {(p.text, p.channel, p.start_frame, p.duration_frames, p.overlap) for p in prompts}
    assert got == {
        ("smiles brightly", "face", 500, 50, "overlay"),
        ("waves with both hands", "gesture", 510, 38, "replace"),
        ("nods", "gaze", 536, 13, "replace"),  # pulled to the window's last frame
    }
    sent = llm.requests[0]
    assert llm.paths == ["/v1/chat/completions"]
    assert llm.headers[0]["authorization"] == "Bearer k"
    assert sent["model"] == "vision-model"
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["strict"] is True
    text, image = sent["messages"][1]["content"]
    assert '"state": "speaking"' in text["text"] and "Welcome to the show" in text["text"]
    assert image["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(IMAGE).decode()
    await planner.close()


async def _falls_back(planner: OpenAIPlanner) -> None:
    expected = HeuristicPlanner(seed=5).plan_now(REQUEST)
    assert await planner.plan(REQUEST) == expected
    assert planner.failures == 1
    await planner.close()


async def test_malformed_json_falls_back(llm: LoopbackOpenAI) -> None:
    llm.answer_json('{"behaviors": [{"text": "waves", ')
    await _falls_back(_planner(llm))


async def test_answer_outside_the_schema_falls_back(llm: LoopbackOpenAI) -> None:
    bad = {"behaviors": [GOOD["behaviors"][0] | {"channel": "legs"}]}
    llm.answer_json(bad)
    await _falls_back(_planner(llm))


async def test_garbage_body_falls_back(llm: LoopbackOpenAI) -> None:
    llm.answer_raw("this is not json at all")
    await _falls_back(_planner(llm))


async def test_http_500_is_retried_then_falls_back(llm: LoopbackOpenAI) -> None:
    llm.answer_status(500)
    await _falls_back(_planner(llm, retries=1))
    assert len(llm.requests) == 2


async def test_http_500_then_success_uses_the_retry(llm: LoopbackOpenAI) -> None:
    llm.answer_status(500)
    llm.answer_json(GOOD)
    planner = _planner(llm, retries=1)
    assert len(await planner.plan(REQUEST)) == 3
    assert planner.failures == 0
    await planner.close()


async def test_a_timeout_falls_back_without_waiting_for_the_model(llm: LoopbackOpenAI) -> None:
    llm.answer_slowly(20.0, GOOD)
    started = time.monotonic()
    await _falls_back(_planner(llm, timeout_s=0.3))
    assert time.monotonic() - started < 5.0  # the model would answer after 20 s


def test_large_images_are_scaled_down_for_the_request() -> None:
    url = image_data_url(_png(1500))
    assert url.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
        assert max(img.size) == 512
