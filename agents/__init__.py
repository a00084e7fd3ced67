"""FlowAct's conversation agent: a LangGraph graph (idle, listening, thinking, speaking) that
turns user text and voice into avatar speech, behavior prompts, states and barge-ins on a
session's streams.

Public surface: `agent.Agent`, `service.serve_agent`, `service.say`, `graph.build_graph`,
the roles in `base` (`Responder`, `TTS`, `VAD`, `SessionClock`, `Outbox`), their
implementations (`ScriptedResponder`, `OpenAIResponder`, `EspeakTTS`, `PassthroughTTS`,
`WebrtcVAD`, `EnergyVAD`), `clock.WallClock` / `clock.ManualClock`, `outbox.BusOutbox` and
`registry`. See docs/agent.md.
"""
