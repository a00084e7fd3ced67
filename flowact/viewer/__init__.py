"""The live browser viewer: a session's video with its audio, agent state, text and behavior input.

Needs the `viewer` extra (starlette, uvicorn). `build_app` gives the ASGI app over a bus;
`serve_viewer` opens a bus by URL and serves it until stopped.
"""

from flowact.viewer.app import DEFAULT_BEHAVIORS, build_app, serve_app, serve_viewer

__all__ = ["DEFAULT_BEHAVIORS", "build_app", "serve_app", "serve_viewer"]
