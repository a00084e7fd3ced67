"""Scene files: the shipped duo, and errors that name the field at fault."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flowact.agents.scene import SceneError, agent_settings, cast_of, load_scene
from flowact.schemas.agent_settings import AgentSettings

DUO = Path(__file__).resolve().parents[2] / "scenes" / "duo.yaml"


def test_the_duo_scene_loads_with_its_images_and_places() -> None:
    scene = load_scene(DUO)
    cast = cast_of(scene)
    assert [(m.id, m.name, m.session, m.cell) for m in cast] == [
        ("ada", "Ada", "duo-ada", (0, 0)),
        ("bo", "Bo", "duo-bo", (1, 0)),
    ]
    assert all(a.image is not None and a.image.is_file() for a in scene.agents)
    assert scene.opening.to == "ada" and scene.turns == 6
    settings = agent_settings(scene, scene.agents[1], AgentSettings())
    assert settings.voice == "en-gb" and settings.reference_image == scene.agents[1].image
    assert "You are Bo." in settings.system_prompt and "bookworm" in settings.system_prompt
    assert "with Ada about weekend plans" in settings.system_prompt


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"layout": {"kind": "grid", "colour": "red"}}, "layout.colour", "Extra inputs"),
        ({"layout": {"background": "blue"}}, "layout.background", "#rrggbb"),
        ({"turns": None, "duration_s": None}, None, "turns or duration_s"),
        ({"opening": {"to": "cy", "text": "hi"}}, None, "opening.to"),
        ({"agents": [{"id": "ada"}, {"id": "ada"}]}, None, "repeated: ada"),
        ({"agents": [{"id": "ada", "position": 2}, {"id": "bo"}]}, None, "outside"),
        ({"agents": [{"id": "ada", "position": 1}, {"id": "bo", "position": 1}]}, None, "share"),
        ({"agents": [{"id": "ada", "voice": ""}, {"id": "bo"}]}, "agents.0.voice", "at least"),
        ({"agents": [{"id": "a:b"}, {"id": "bo"}]}, "agents.0.id", "pattern"),
        ({"agents": [{"id": "ada"}]}, "agents", "at least 2"),
        ({"session": "duo:x"}, "session", "pattern"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, changes, field, words) -> None:
    document = yaml.safe_load(DUO.read_text())
    for agent in document["agents"]:
        agent.pop("image")
    for key, value in changes.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    file = tmp_path / "scene.yaml"
    file.write_text(yaml.safe_dump(document))
    with pytest.raises(SceneError) as caught:
        load_scene(file)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_a_missing_image_is_named_with_its_path(tmp_path: Path) -> None:
    document = yaml.safe_load(DUO.read_text())
    document["agents"][1]["image"] = "nowhere.png"
    document["agents"][0]["image"] = str(DUO.parent / "ada.png")  # absolute paths are kept
    file = tmp_path / "scene.yaml"
    file.write_text(yaml.safe_dump(document))
    with pytest.raises(SceneError) as caught:
        load_scene(file)
    assert caught.value.field == "agents.1.image"
    assert str(tmp_path / "nowhere.png") in str(caught.value)


def test_unplaced_agents_fill_free_grid_slots(tmp_path: Path) -> None:
    document = yaml.safe_load(DUO.read_text())
    document["layout"] = {"kind": "grid", "columns": 2}
    document["agents"] = [{"id": "a"}, {"id": "b", "position": 0}, {"id": "c"}]
    document["opening"]["to"] = "a"
    file = tmp_path / "scene.yaml"
    file.write_text(yaml.safe_dump(document))
    scene = load_scene(file)
    assert scene.slots() == {"a": (1, 0), "b": (0, 0), "c": (0, 1)}
    assert scene.layout.grid(3) == (2, 2)
