"""The latent readout: its ridge and convolutional readouts recover what is there and nothing
that is not, and on the shipped checkpoint each pose's frames and latent line up with its
controls (the probe reads the rendered poses right)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import latent_readout as lr
from flowact.renderer.training import world
from flowact.renderer.training.export import load_checkpoint

DEMO = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"


def _linear_data(seed: int, n: int = 600, d: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    weights = rng.normal(size=(d, len(bh.CONTROLS)))
    return x, x @ weights + 0.1 * rng.normal(size=(n, len(bh.CONTROLS)))


def test_ridge_reads_a_linear_code_and_not_noise():
    x, y = _linear_data(0)
    fit = lr.fit_ridge(x[:400], y[:400], penalty=1.0)
    held = lr.correlations(lr.apply_ridge(fit, x[400:]), y[400:])
    assert min(held.values()) > 0.95
    noise = np.random.default_rng(1).normal(size=y.shape)  # targets the latents do not hold
    chance = lr.correlations(
        lr.apply_ridge(lr.fit_ridge(x[:400], noise[:400], 1.0), x[400:]), noise[400:]
    )
    assert max(abs(v) for v in chance.values()) < 0.3


def test_the_conv_readout_learns_a_map_from_latents():
    torch.manual_seed(0)
    x = torch.randn(256, 8, 16, 16)
    y = torch.stack([x[:, c].mean((1, 2)) * 4 for c in range(8)], 1)  # per-channel means
    y = torch.cat([y, y[:, :6] * -1], 1)
    cfg = lr.ReadoutConfig(conv_steps=150)
    model, losses = lr.train_conv(x, y, cfg, torch.device("cpu"))
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:20])
    assert model(x[:4]).shape == (4, len(bh.CONTROLS))


def test_the_readout_of_the_shipped_checkpoint_lines_poses_up(tmp_path):
    """A small readout through the command: every reading of every control is reported, and
    the probe reads the rendered poses right, so frames and targets are aligned."""
    out = tmp_path / "readout.json"
    args = [
        "--train-clips",
        "4",
        "--eval-clips",
        "4",
        "--poses",
        "4",
        "--hold",
        "2",
        "--conv-steps",
        "30",
    ]
    subprocess.run(
        [sys.executable, "-m", "flowact.renderer.training.latent_readout"]
        + ["--checkpoint", str(DEMO), "--out", str(out), *args],
        check=True,
        capture_output=True,
    )
    result = json.loads(out.read_text())
    corr = result["correlation"]
    assert set(corr) == set(lr.READINGS)
    assert all(set(r) == set(bh.CONTROLS) for r in corr.values())
    assert result["samples"] == {"train": 16, "eval": 16}
    raw = corr["probe_raw"]
    assert np.median(list(raw.values())) > 0.8, raw
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_a_workdirs_vae_is_read_in_place_of_the_checkpoints(tmp_path):
    from flowact.renderer.training.common import StageState

    shipped = load_checkpoint(DEMO).vae
    with pytest.raises(FileNotFoundError, match="holds no VAE stage"):
        lr.workdir_vae(tmp_path, shipped)
    trained = type(shipped)(shipped.config)
    trained.load_state_dict(shipped.state_dict())
    with torch.no_grad():
        next(trained.encoder.parameters()).add_(0.25)  # a VAE that went on training
    StageState({"vae": trained}, step=7, seconds=1.0).save(tmp_path / "vae" / "state.pt")
    read = lr.workdir_vae(tmp_path, shipped)
    for name, value in trained.state_dict().items():
        assert torch.equal(read.state_dict()[name], value), name
    assert not torch.equal(next(read.encoder.parameters()), next(shipped.encoder.parameters()))


def test_the_command_names_a_workdir_without_a_vae(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "flowact.renderer.training.latent_readout"]
        + ["--checkpoint", str(DEMO), "--vae", str(tmp_path), "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert f"{tmp_path} holds no VAE stage" in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_held_faces_read_each_expression_rendered_and_decoded(tmp_path, monkeypatch, capsys):
    """`--faces` on the shipped checkpoint: every face behavior, its truth, and the probe's
    readings; rendered, the probe tells a smile from a frown and a surprise's wide eyes."""
    out = tmp_path / "faces.json"
    argv = ["latent_readout", "--faces", "--checkpoint", str(DEMO), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--eval-clips", "3", "--hold", "2"])
    lr.main()
    result = json.loads(out.read_text())
    assert result["channel"] == "face"
    faces = result["held"]
    wanted = {b.name for b in bh.BEHAVIORS if b.channel == "face"} | {"neutral"}
    assert set(faces) == wanted
    assert lr.HELD_READINGS["face"] == ("smile", "brows", "eyes")
    for got in faces.values():
        assert set(got) == {"truth", "raw", "decoded", "kept"}
        assert all(set(got[v]) == {"smile", "brows", "eyes"} for v in ("truth", "raw", "decoded"))
    assert faces["neutral"]["kept"] is None
    # the shipped VAE keeps a good share of a frown's pixels (its brow shade; a frown drawn by
    # the mouth and brows alone kept 0.08 of them)
    assert 0 < faces["smile"]["kept"] < 1 and faces["frown"]["kept"] > 0.2
    assert faces["frown"]["truth"] == pytest.approx(
        {"smile": -1, "brows": -0.3, "eyes": bh.EYES_REST}
    )
    raw = {name: got["raw"] for name, got in faces.items()}
    assert raw["smile"]["smile"] > raw["neutral"]["smile"] + 0.4
    assert raw["frown"]["smile"] < raw["neutral"]["smile"] - 0.2
    assert raw["surprise"]["eyes"] > raw["neutral"]["eyes"] + 0.2
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| face | smile: truth / rendered / decoded")
    assert "| frown | -1.00 / " in table
    # and the picture of it: a row per face, rendered and decoded faces of 3 characters
    picture = np.asarray(Image.open(out.with_suffix(".png")))
    region = world.face_region(128, 128)
    face_h, face_w = int(region.any(1).sum()), int(region.any(0).sum())
    assert picture.shape == (len(wanted) * face_h * 2, 3 * 2 * face_w * 2, 3)
    assert picture.std() > 10  # faces, not a blank


def test_held_gestures_read_the_arms_in_whole_frames(tmp_path, monkeypatch, capsys):
    """`--held gesture`: each gesture that holds a pose (a wave's raised arm too), read by the
    arms' controls; rendered, the probe tells both arms raised high from arms spread."""
    out = tmp_path / "gestures.json"
    argv = ["latent_readout", "--held", "gesture", "--checkpoint", str(DEMO), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*argv, "--eval-clips", "3", "--hold", "2"])
    lr.main()
    held = json.loads(out.read_text())["held"]
    gestures = {b.name for b in bh.BEHAVIORS if b.channel == "gesture"}
    assert set(held) == gestures | {"neutral"}
    assert set(lr.HELD_READINGS["gesture"]) == {"l_raise", "r_raise", "l_bend", "r_bend"}
    assert held["raise_both"]["truth"]["l_raise"] == pytest.approx(0.85)
    raw = {name: got["raw"] for name, got in held.items()}
    assert raw["raise_both"]["l_raise"] > raw["spread"]["l_raise"] + 0.15
    assert raw["raise_both"]["r_raise"] > raw["neutral"]["r_raise"] + 0.4
    assert all(0 < held[name]["kept"] < 1.5 for name in gestures)
    assert capsys.readouterr().out.startswith("| gesture | r_raise: truth / rendered / decoded")
    # whole frames, at their own size: a row per pose, 3 characters rendered and decoded
    picture = np.asarray(Image.open(out.with_suffix(".png")))
    assert picture.shape == (len(held) * 128, 3 * 2 * 128, 3)


def test_held_gazes_leave_out_the_swinging_ones():
    """Nods and shakes hold no pose, so the gaze channel's held poses are the four looks."""
    assert lr.HELD_READINGS["gaze"] == ("gaze_y", "gaze_x", "pitch", "yaw")
    poses = lr.held_clips(load_checkpoint(DEMO), "gaze", identities=1, latents=1)
    assert [p.name for p in poses] == ["neutral", "look_up", "look_down", "look_left", "look_right"]
    assert poses[1].truth[bh.C["gaze_y"]] == -1.0 and poses[0].truth[bh.C["gaze_y"]] == 0.0
    assert poses[1].views["decoded"].shape == poses[1].views["raw"].shape == (1, 5, 3, 128, 128)


def test_pixels_kept_is_the_share_of_a_change_that_comes_through():
    shape = (2, 1 + 4 * 2, 3, 8, 8)
    neutral_raw, face_raw = torch.zeros(shape), torch.randn(shape)
    neutral = lr.HeldPose("neutral", np.zeros(1), {"raw": neutral_raw, "decoded": neutral_raw})

    def face(decoded: torch.Tensor) -> lr.HeldPose:
        return lr.HeldPose("face", np.zeros(1), {"raw": face_raw, "decoded": decoded})

    assert lr.pixels_kept(neutral, face(face_raw)) == pytest.approx(1.0)
    assert lr.pixels_kept(neutral, face(0.3 * face_raw)) == pytest.approx(0.3)
    assert lr.pixels_kept(neutral, face(neutral_raw)) == pytest.approx(0.0)  # erased
    # only the last latent's 4 frames count: the face is held by then
    early = face_raw.clone()
    early[:, :-4] = 0
    assert lr.pixels_kept(neutral, face(early)) == pytest.approx(1.0)
    # what the VAE changes elsewhere (not the drawn change) does not count as kept
    last = face_raw[:, -4:]
    other = torch.zeros(shape)
    other[:, -4:] = torch.randn(last.shape)
    other[:, -4:] -= (other[:, -4:] * last).sum() / last.pow(2).sum() * last  # orthogonal
    assert lr.pixels_kept(neutral, face(face_raw + other)) == pytest.approx(1.0, abs=1e-4)
