"""The scene file: several avatars in one composed stream (`flowact scene scenes/duo.yaml`).

A scene names its agents (persona, reference image, espeak voice, place in the layout), the
layout of the composed picture, how the conversation opens and how long it runs. Each agent gets
a renderer session of its own (`{session}-{agent id}` unless named); the compositor publishes the
composed picture as the session `session`. See docs/scenes.md.

Only data here: paths stay as written in the file (relative to the file's folder); the loader in
`flowact.agents.scene` resolves them and reads the images.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flowact.schemas.messages import MAX_TEXT_CHARS, Codec, SessionId

MAX_AGENTS = 9
HEX_COLOUR = re.compile(r"^#(?P<rgb>[0-9a-fA-F]{6})$")

# Agent ids become part of session ids (`duo-ada`) and are matched as names in replies.
Pixels = Annotated[int, Field(gt=0, le=4096)]
AgentId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][\w-]*$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SceneAgent(_Model):
    """One avatar of the scene."""

    id: AgentId
    name: str | None = Field(default=None, min_length=1, max_length=64)
    persona: str = Field(default="", max_length=MAX_TEXT_CHARS)
    image: Path | None = None
    voice: str = Field(default="en-us", min_length=1, max_length=64)
    position: int | None = Field(default=None, ge=0)
    session: SessionId | None = None

    @property
    def display_name(self) -> str:
        """What the others call this agent (the id when no name is given)."""
        return self.name or self.id


class Layout(_Model):
    """Where the tiles go: one row (`side_by_side`) or a grid of `columns`.

    Tiles keep the size of the agents' video (or `tile`), with `gap` pixels between and around
    them over the background colour or image (cropped and scaled to cover the canvas).
    """

    kind: Literal["side_by_side", "grid"] = "side_by_side"
    columns: int | None = Field(default=None, ge=1, le=MAX_AGENTS)
    tile: tuple[Pixels, Pixels] | None = None  # (width, height); None: the agents' video size
    gap: int = Field(default=8, ge=0, le=512)
    background: str = "#1e1e24"
    background_image: Path | None = None

    @field_validator("background")
    @classmethod
    def _hex_colour(cls, value: str) -> str:
        if HEX_COLOUR.match(value) is None:
            raise ValueError(f"background is a colour written #rrggbb, got {value!r}")
        return value

    @property
    def rgb(self) -> tuple[int, int, int]:
        text = self.background[1:]
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)

    def grid(self, tiles: int) -> tuple[int, int]:
        """(columns, rows) for `tiles` tiles."""
        if self.kind == "side_by_side":
            return tiles, 1
        columns = self.columns or math.ceil(math.sqrt(tiles))
        return columns, math.ceil(tiles / columns)


class Opening(_Model):
    """The line that starts the conversation, said to agent `to` as if by a moderator."""

    to: AgentId
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class DirectorSettings(_Model):
    """Turn-taking and listener behavior."""

    turn_timeout_s: float = Field(
        default=20.0, gt=0, le=600, description="an agent that does not start speaking is skipped"
    )
    react_every_s: float = Field(
        default=2.4, gt=0, le=60, description="how often listeners nod and look again"
    )
    seed: int = Field(default=0, ge=0)


class CompositorSettings(_Model):
    """The composed stream."""

    allowance_ms: int = Field(
        default=240, ge=0, le=10_000, description="how late a tile's chunk may be before it is held"
    )
    start_wait_ms: int = Field(
        default=3000, ge=0, le=60_000, description="wait for every tile's first chunk"
    )
    codec: Codec = "jpeg"
    jpeg_quality: int = Field(default=85, ge=10, le=100)


class Scene(_Model):
    """A scene file. At least one of `turns` and `duration_s` ends it."""

    session: SessionId
    agents: list[SceneAgent] = Field(min_length=2, max_length=MAX_AGENTS)
    opening: Opening
    topic: str = Field(default="", max_length=MAX_TEXT_CHARS)
    turns: int | None = Field(default=None, ge=1, le=1000)
    duration_s: float | None = Field(default=None, gt=0, le=24 * 3600)
    layout: Layout = Layout()
    director: DirectorSettings = DirectorSettings()
    compositor: CompositorSettings = CompositorSettings()
    renderer: Literal["embedded", "external"] = "embedded"
    preset: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> Scene:
        if self.turns is None and self.duration_s is None:
            raise ValueError("give turns or duration_s (or both): nothing would end the scene")
        ids = [a.id for a in self.agents]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"agent ids must be unique; repeated: {', '.join(twice)}")
        if self.opening.to not in ids:
            raise ValueError(f"opening.to is {self.opening.to!r}, not one of the agents {ids}")
        sessions = [self.session, *self.sessions().values()]
        if len(set(sessions)) != len(sessions):
            raise ValueError(f"the scene and its agents need distinct sessions, got {sessions}")
        self.slots()  # positions fit the layout
        return self

    def sessions(self) -> dict[str, str]:
        """Agent id -> the session its avatar is rendered on."""
        return {a.id: a.session or f"{self.session}-{a.id}" for a in self.agents}

    def slots(self) -> dict[str, tuple[int, int]]:
        """Agent id -> (column, row) of its tile. Unplaced agents fill the free slots in order."""
        columns, rows = self.layout.grid(len(self.agents))
        taken: dict[int, str] = {}
        for a in self.agents:
            if a.position is None:
                continue
            if a.position >= columns * rows:
                raise ValueError(
                    f"agent {a.id!r}: position {a.position} is outside the layout's "
                    f"{columns * rows} slots ({columns} x {rows})"
                )
            if a.position in taken:
                raise ValueError(
                    f"agents {taken[a.position]!r} and {a.id!r} share position {a.position}"
                )
            taken[a.position] = a.id
        free = (slot for slot in range(columns * rows) if slot not in taken)
        order = {a.id: a.position if a.position is not None else next(free) for a in self.agents}
        return {agent: (slot % columns, slot // columns) for agent, slot in order.items()}
