import time

import pytest
from agent_harness import Harness
from openai_loopback import LoopbackOpenAI

from flowact.agents.base import ResponderError, Turn
from flowact.agents.openai_responder import OpenAIResponder
from flowact.agents.scripted_responder import ScriptedResponder, intent_of
from flowact.agents.tasks import FALLBACK_REPLY


def user(text: str) -> list[Turn]:
    return [Turn("user", text)]


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("Hello!", "greeting"),
        ("hi there", "greeting"),
        ("How are you doing?", "wellbeing"),
        ("What is your name?", "name"),
        ("Thanks a lot", "thanks"),
        ("ok bye", "farewell"),
        ("Why is the sky blue?", "question"),
        ("I like sailing", "other"),
        ("which is the highest mountain", "other"),
    ],
)
def test_intents(text: str, intent: str) -> None:
    assert intent_of(text) == intent


async def test_scripted_replies_vary_and_are_seeded() -> None:
    async def five(seed: int) -> list[str]:
        responder = ScriptedResponder(seed)
        return [await responder.reply(user("Hello!")) for _ in range(5)]

    lines = await five(1)
    assert lines == await five(1)
    assert all(a != b for a, b in zip(lines, lines[1:], strict=False))
    assert len(set(lines)) == 3  # every greeting line is used before one repeats
    topic = await ScriptedResponder().reply(user("I have been learning the accordion"))
    assert "accordion" in topic.lower()
    with pytest.raises(ResponderError):
        await ScriptedResponder().reply([])


def _responder(llm: LoopbackOpenAI, **kw) -> OpenAIResponder:
    options = {"timeout_s": 2.0, "retries": 0} | kw
    return OpenAIResponder(
        base_url=llm.base_url, model="chat-model", system_prompt="Be brief.", **options
    )


async def test_openai_reply_sends_the_conversation_and_cleans_markdown(llm: LoopbackOpenAI) -> None:
    llm.answer_json("**Sure!** Here it is:\n- one `thing`")
    history = [Turn("user", "hi"), Turn("assistant", "Hello!"), Turn("user", "list one thing")]
    responder = _responder(llm, history_turns=2)
    assert await responder.reply(history) == "Sure! Here it is:\none thing"
    sent = llm.requests[0]
    assert sent["model"] == "chat-model"
    # The window of 2 turns would start with the assistant; it starts at the user's turn.
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "list one thing"},
    ]
    await responder.close()


@pytest.mark.parametrize("failure", ["500", "garbage", "empty", "slow"])
async def test_openai_failures_raise_responder_error_promptly(
    llm: LoopbackOpenAI, failure: str
) -> None:
    {
        "500": lambda: llm.answer_status(500),
        "garbage": lambda: llm.answer_raw("<html>bad gateway</html>"),
        "empty": lambda: llm.answer_json(""),
        "slow": lambda: llm.answer_slowly(20.0, "too late"),
    }[failure]()
    responder = _responder(llm, timeout_s=0.3, retries=1)
    started = time.monotonic()
    with pytest.raises(ResponderError):
        await responder.reply(user("hello?"))
    assert time.monotonic() - started < 5.0
    if failure == "500":
        assert len(llm.requests) == 2  # retried once
    await responder.close()


async def test_the_agent_apologizes_when_the_llm_fails_and_keeps_going(llm: LoopbackOpenAI) -> None:
    llm.answer_status(500)
    llm.answer_json("Now I can answer.")
    async with Harness(responder=_responder(llm), lead_ms=10_000) as h:
        h.agent.say("Hello?")
        await h.wait_phase("speaking")
        h.agent.say("And now?")
        await h.wait_for(lambda: h.agent.state["turn"] == 2 and h.agent.phase == "speaking")
        said = [m.text for m in await h.messages("events") if m.type == "transcript"]
        assert said == [FALLBACK_REPLY, "Now I can answer."]
