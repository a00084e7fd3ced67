"""Prompt anchoring: unseen phrasings reach the DiT as the phrasings it was trained on."""

from __future__ import annotations

import json

import pytest
import torch

from flowact.renderer.anchors import SPEC_KEY, PromptAnchors, anchor_spec, table_encoder
from flowact.renderer.text import HashTextEncoder
from flowact.renderer.training import behaviors as bh


@pytest.fixture(scope="module")
def encoder() -> HashTextEncoder:
    return HashTextEncoder()


def test_the_nearest_trained_phrasing_is_given_in_place_of_a_new_one(encoder):
    spec = anchor_spec({"gaze": ["looks to the left", "looks to the right", "nods"]}, 0.0)
    anchors = PromptAnchors.from_spec(spec, encoder.encode)
    asked = encoder.encode(["looks over to the left side", "nods", "smiles warmly"])
    got = anchors.apply(asked, "gaze")
    trained = encoder.encode(["looks to the left", "nods"])
    assert torch.allclose(got[0], trained[0]) and torch.allclose(got[1], trained[1])
    # a channel with no trained phrasings named keeps its prompts as they are
    assert torch.equal(anchors.apply(asked, "face"), asked)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3))


def test_a_temperature_blends_by_similarity_and_a_low_one_nears_the_nearest(encoder):
    phrasings = ["looks to the left", "looks to the right", "nods firmly"]
    asked = encoder.encode(["looks over to the left side"])
    trained = encoder.encode(phrasings)
    nearest = PromptAnchors.from_spec(anchor_spec({"gaze": phrasings}, 0.0), encoder.encode)
    cold = PromptAnchors.from_spec(anchor_spec({"gaze": phrasings}, 0.01), encoder.encode)
    warm = PromptAnchors.from_spec(anchor_spec({"gaze": phrasings}, 10.0), encoder.encode)
    assert torch.allclose(cold.apply(asked, "gaze"), nearest.apply(asked, "gaze"), atol=1e-3)
    # hot: nearly the mean of all of them
    mean = torch.nn.functional.normalize(trained.mean(0), dim=0)
    assert torch.allclose(warm.apply(asked, "gaze")[0], mean, atol=0.05)


def test_a_spec_that_cannot_be_used_is_refused_by_name(encoder):
    with pytest.raises(ValueError, match="'mood' is not a behavior channel"):
        anchor_spec({"mood": ["smiles"]})
    with pytest.raises(ValueError, match="temperature must be a number >= 0, not -1"):
        PromptAnchors.from_spec(
            {"temperature": -1, "prompts": {"face": ["smiles"]}}, encoder.encode
        )
    with pytest.raises(ValueError, match="'face' needs a list of one phrasing or more"):
        anchor_spec({"face": "smiles"})
    texts = bh.prompt_table()[0]
    lookup = table_encoder(texts, encoder.encode(texts))
    assert torch.equal(lookup([texts[3]]), encoder.encode([texts[3]]))
    with pytest.raises(ValueError, match="'waves wildly' is not in the prompt table"):
        lookup(["waves wildly"])


def test_the_world_anchors_on_its_training_phrasings_only():
    phrasings = bh.training_phrasings()
    assert set(phrasings) == set(bh.BEHAVIOR_CHANNELS)
    heldout = {p for b in bh.BEHAVIORS for p in b.heldout}
    named = [p for ps in phrasings.values() for p in ps]
    assert len(named) == sum(len(b.prompts) for b in bh.BEHAVIORS) and not heldout & set(named)
    json.dumps({SPEC_KEY: anchor_spec(phrasings)})  # it goes into sampling.json as it is


def test_a_checkpoint_with_anchors_conditions_the_renderer_on_its_trained_phrasings(tmp_path):
    import numpy as np

    from flowact.renderer.engine import RendererParts, SessionRenderer
    from flowact.renderer.timeline import ChunkPlan
    from flowact.renderer.training.export import export_checkpoint
    from flowact.schemas import timebase as tb

    plain = RendererParts.build("tiny", weights="random", text_encoder="hash")
    spec = anchor_spec({"gaze": ["looks to the left", "looks to the right"]})
    export_checkpoint(tmp_path, plain.model, plain.vae, plain.audio, sampling={SPEC_KEY: spec})
    parts = RendererParts.build("tiny", weights=tmp_path, text_encoder="hash")
    assert parts.anchors is not None and plain.anchors is None
    silence = np.zeros(tb.SAMPLES_PER_CHUNK, np.float32)
    plan = ChunkPlan(0, silence, {"gaze": ("peeks over to the left",), "face": ("smiles",)}, False)
    anchored = SessionRenderer(parts)._condition(plan)
    unanchored = SessionRenderer(plain)._condition(plan)
    slot = {ch: i for i, ch in enumerate(bh.BEHAVIOR_CHANNELS)}
    left = parts.text.encode(["looks to the left"])[0]
    assert torch.allclose(anchored.text[0, 0, slot["gaze"]], left, atol=1e-6)
    assert not torch.allclose(unanchored.text[0, 0, slot["gaze"]], left, atol=1e-3)
    # the face channel names no phrasings: its prompt goes through as it is
    assert torch.equal(anchored.text[0, :, slot["face"]], unanchored.text[0, :, slot["face"]])


def test_an_evaluation_gives_each_slot_its_channels_anchored_phrasings(encoder):
    from flowact.renderer.training.evaluate import EvalConfig, anchored_ids, eval_anchors
    from flowact.renderer.training.export import TRAINED_KEY, Bundle

    texts, train, heldout = bh.prompt_table()
    table = encoder.encode(texts)
    bundle = Bundle(None, None, None, None, None, {})  # only its sampling is read
    assert eval_anchors(bundle, table, EvalConfig()) is None  # none named, none asked for
    anchors = eval_anchors(bundle, table, EvalConfig(anchor_temperature=0.0))
    assert eval_anchors(bundle, table, EvalConfig(anchors=False, anchor_temperature=0.0)) is None
    slot = {ch: i for i, ch in enumerate(bh.BEHAVIOR_CHANNELS)}
    look_left = bh.BEHAVIOR_INDEX["look_left"]
    ids = torch.full((1, 3, len(slot)), -1)
    ids[0, 0, slot["gaze"]] = heldout[look_left][0]
    ids[0, 1, slot["gaze"]] = train[look_left][2]
    stacked, moved = anchored_ids(table, ids, anchors)
    got = stacked[moved[0, :2, slot["gaze"]]]
    gaze = [i for b in bh.CHANNEL_BEHAVIORS["gaze"] for i in train[b]]
    nearest = gaze[int((table[gaze] @ table[heldout[look_left][0]]).argmax())]
    assert torch.allclose(got[0], table[nearest], atol=1e-6)
    assert torch.allclose(got[1], table[train[look_left][2]], atol=1e-6)  # trained: itself
    assert (moved[ids < 0] == -1).all()
    # a checkpoint that records what it was trained on is anchored on those phrasings alone
    known = [texts[train[b][0]] for b in bh.CHANNEL_BEHAVIORS["gaze"]]
    recorded = Bundle(None, None, None, None, None, {TRAINED_KEY: {"gaze": known}})
    anchors = eval_anchors(recorded, table, EvalConfig(anchor_temperature=0.0))
    stacked, moved = anchored_ids(table, ids, anchors)
    got = stacked[moved[0, :2, slot["gaze"]]]
    firsts = [train[b][0] for b in bh.CHANNEL_BEHAVIORS["gaze"]]
    for row, i in zip(got, (heldout[look_left][0], train[look_left][2]), strict=True):
        assert torch.allclose(row, table[firsts[int((table[firsts] @ table[i]).argmax())]])
