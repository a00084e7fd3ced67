"""FlowAct."""
