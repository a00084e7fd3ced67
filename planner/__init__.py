"""FlowAct's action planner: windows of conversation in, timed behavior prompts out.

`base.Planner` (the role), `heuristic.HeuristicPlanner` (prosody and keywords, no model) and
`openai.OpenAIPlanner` (a multimodal chat model, as in the paper's section 2.6). See
docs/agent.md.
"""
