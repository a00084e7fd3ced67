"""Real footage as training data: video files with sound (written with PyAV), prepared at the
tiny preset's size, drawn from as clips, and trained on by the whole pipeline."""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from flowact.renderer.media import decode_jpeg
from flowact.renderer.text import HashTextEncoder
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import world
from flowact.renderer.training.export import load_checkpoint
from flowact.renderer.training.footage import FootageClips, prepare_footage, read_manifest
from flowact.renderer.training.pipeline import PipelineConfig, run_pipeline
from flowact.renderer.training.pipeline import main as pipeline_main
from flowact.renderer.training.vae_train import VAETrainConfig, train_vae

GESTURE, FACE = bh.BEHAVIOR_CHANNELS.index("gesture"), bh.BEHAVIOR_CHANNELS.index("face")


def _write_video(path: Path, frames: np.ndarray, pcm: np.ndarray | None, fps: int, rate: int):
    """uint8 frames `[T, H, W, 3]` as h264 at `fps`; float 16 kHz `pcm` as AAC at `rate` Hz."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.height, video.width = frames.shape[1:3]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "10"}
        audio = out.add_stream("aac", rate=rate, layout="mono") if pcm is not None else None
        for image in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode())
        if audio is not None:
            frame = av.AudioFrame.from_ndarray(pcm[None].astype(np.float32), "flt", "mono")
            frame.sample_rate, frame.pts = 16000, 0
            out.mux(audio.encode(frame))  # the encoder resamples to `rate`
            out.mux(audio.encode(None))


def _sidecar(path: Path, **fields) -> None:
    path.with_suffix(".json").write_text(json.dumps(fields))


def _counting_frames(count: int) -> np.ndarray:
    """32 x 48 frames: a grey square whose level is 3 x the frame's index, between red bars
    that a centre crop to a square removes."""
    frames = np.zeros((count, 32, 48, 3), np.uint8)
    frames[:, :, :8, 0] = frames[:, :, -8:, 0] = 255
    frames[:, :, 8:-8] = (3 * np.arange(count, dtype=np.uint8))[:, None, None, None]
    return frames


@pytest.fixture(scope="module")
def talk():
    """A world clip at 48 x 64 (another size and aspect than tiny's 32 x 32), with its speech."""
    clip = world.make_clips(1, world.ClipConfig(chunks=6, size=(48, 64)), np.random.default_rng(0))
    frames = ((clip.frames[0].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
    pcm = np.concatenate([np.zeros(640, np.float32), clip.pcm[0].numpy()])  # frame 0: silent
    return clip, frames, pcm


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, talk):
    """Three videos: the world clip (mp4, 25 fps, 44.1 kHz, prompts), a counting video (mkv,
    50 fps, 16 kHz, held out, reference at 1 s), and one second without a sidecar (mov)."""
    folder = tmp_path_factory.mktemp("videos")
    _, frames, pcm = talk
    _write_video(folder / "talk.mp4", frames, pcm, fps=25, rate=44100)
    prompts = [
        {"channel": "gesture", "text": "waves hello", "start": 0.4, "end": 1.2},
        {"channel": "face", "text": "smiles warmly", "start": 1.0, "end": 2.0},
        {"channel": "gesture", "text": "points ahead", "start": 2.0, "end": 2.92},
    ]
    _sidecar(folder / "talk.mp4", prompts=prompts)
    noise = np.random.default_rng(1).normal(0, 0.1, 32000).astype(np.float32)
    _write_video(folder / "count.mkv", _counting_frames(80), noise, fps=50, rate=16000)
    smile = {"channel": "face", "text": "smiles warmly", "start": 0.2, "end": 0.6}
    _sidecar(folder / "count.mkv", reference=1.0, split="eval", prompts=[smile])
    _write_video(folder / "bare.mov", frames[:25], pcm[: 25 * 640], fps=25, rate=16000)
    out = tmp_path_factory.mktemp("footage")
    prepare_footage(folder, out, "tiny")
    return out, folder


def test_prepared_footage_is_cropped_resampled_and_aligned(prepared, talk):
    out, _ = prepared
    manifest = read_manifest(out)
    videos = {v.name: v for v in manifest.videos}
    assert {n: (v.frames, v.reference, v.split) for n, v in videos.items()} == {
        "bare": (25, 0, "train"),
        "count": (40, 25, "eval"),
        "talk": (73, 0, "train"),
    }
    # 50 fps -> 25: frame i is source frame 2i (grey 6i), the red bars cropped away
    count = np.load(out / "count.frames.npy").astype(np.int16)
    assert count.shape == (40, 32, 32, 3)
    assert np.abs(count.mean((1, 2, 3)) - 6 * np.arange(40)).max() < 1.5
    assert np.abs(count[..., 0] - count[..., 1]).max() < 8  # no red left
    # the world clip: cropped to a square and resized, it is the world drawn at 32 x 32
    clip, _, pcm = talk
    talk_frames = np.load(out / "talk.frames.npy").astype(np.float32) / 127.5 - 1
    neutral = torch.from_numpy(bh.neutral_controls(1))[None]
    truth = world.render(clip.identity, torch.cat([neutral, clip.controls], 1), (32, 32))[0]
    err = np.abs(talk_frames - truth.permute(0, 2, 3, 1).numpy()).mean(-1)
    assert err.mean() < 0.1 and np.abs(talk_frames[:, :, ::-1] - talk_frames).mean() > 0.1
    # 44.1 kHz AAC back to 16 kHz, on the video's clock
    speech = np.load(out / "talk.npz")
    assert speech["pcm"].dtype == np.int16 and speech["pcm"].shape == (73 * 640,)
    assert np.corrcoef(speech["pcm"] / 32768, pcm[: 73 * 640])[0, 1] > 0.9
    assert np.load(out / "count.npz")["pcm"].shape == (40 * 640,)


def test_prompt_ids_follow_the_annotated_times(prepared):
    out, _ = prepared
    manifest = read_manifest(out)
    # in order of first use, videos by name: count's prompt, then talk's
    assert manifest.prompts == ["smiles warmly", "waves hello", "points ahead"]
    table = torch.load(out / "text_table.pt")
    assert torch.equal(table, HashTextEncoder().encode(manifest.prompts))  # tiny's encoder
    ids = np.load(out / "talk.npz")["prompt"]
    assert ids.shape == (73, len(bh.BEHAVIOR_CHANNELS))
    gesture = np.full(73, -1)
    gesture[10:30], gesture[50:73] = 1, 2  # 0.4-1.2 s, 2.0-2.92 s: frame i is at i / 25 s
    face = np.full(73, -1)
    face[25:50] = 0
    assert np.array_equal(ids[:, GESTURE], gesture) and np.array_equal(ids[:, FACE], face)
    count = np.load(out / "count.npz")["prompt"]  # the same text: the same row
    assert set(np.flatnonzero(count[:, FACE] == 0)) == set(range(5, 15))
    assert (np.load(out / "bare.npz")["prompt"] == -1).all()


def test_footage_clips_start_from_the_reference_frame(prepared):
    out, _ = prepared
    held = FootageClips(out).heldout()
    clip = held.make(6, 1, np.random.default_rng(0))
    assert clip.frames.shape == (6, 13, 3, 32, 32) and clip.controls is None
    assert clip.identity is None and clip.behavior is None
    grey = ((clip.frames.mean((2, 3, 4)) + 1) * 127.5).numpy()  # [B, 13]: 6 x the frame index
    assert np.abs(grey[:, 0] - 6 * 25).max() < 1.5  # frame 0: the reference, at 1 s
    starts = np.round(grey[:, 1] / 6).astype(int)
    assert (starts % 4 == 0).all() and len(set(starts)) > 1  # on the latent grid, at random
    assert np.abs(grey[:, 1:] - 6 * (starts[:, None] + np.arange(12))).max() < 1.5
    speech = np.load(out / "count.npz")
    for b, start in enumerate(starts):  # speech and prompts of the same frames
        want = speech["pcm"][start * 640 : (start + 12) * 640] / 32768
        assert np.allclose(clip.pcm[b].numpy(), want)
        assert np.array_equal(clip.prompt[b].numpy(), speech["prompt"][start : start + 12])
    # a clip longer than `bare` (25 frames) comes from `talk` (73) alone; none holds 7 chunks
    with capture_logs() as logs:
        long = FootageClips(out).make(3, 4, np.random.default_rng(0))
    assert long.frames.shape == (3, 49, 3, 32, 32)
    assert [(e["event"], e["videos"]) for e in logs] == [("footage_too_short", ["bare"])]
    with pytest.raises(ValueError, match="no train video .* holds a clip of 84 frames"):
        FootageClips(out).make(1, 7, np.random.default_rng(0))


@pytest.fixture(scope="module")
def one_second(tmp_path_factory, talk):
    _, frames, pcm = talk
    path = tmp_path_factory.mktemp("one") / "v.mp4"
    _write_video(path, frames[:25], pcm[: 25 * 640], fps=25, rate=16000)
    return path


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        ({"channel": "dance", "start": 0.1, "end": 0.5}, r"prompts\.0\.channel\n.*'gaze'"),
        ({"channel": "face", "start": 0.5, "end": 0.2}, "end 0.2 s is not after start 0.5 s"),
        ({"channel": "face", "start": 0.5, "end": 5.0}, r"prompts\.0\.end 5\.0 s is past the"),
        (None, "prompts 0 and 1 overlap on channel 'gesture' "),
    ],
)
def test_a_bad_sidecar_is_named_before_anything_is_decoded(one_second, tmp_path, prompt, problem):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copyfile(one_second, folder / "v.mp4")
    prompts = (
        [{"text": "x", **prompt}]
        if prompt
        else [
            {"channel": "gesture", "text": "waves", "start": 0.0, "end": 0.5},
            {"channel": "gesture", "text": "points", "start": 0.4, "end": 0.8},
        ]
    )
    _sidecar(folder / "v.mp4", prompts=prompts)
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'v.json'))}: (.|\n)*{problem}"):
        prepare_footage(folder, tmp_path / "out", "tiny")
    assert not (tmp_path / "out").exists()


def test_a_video_without_sound_is_refused(talk, tmp_path, monkeypatch, capsys):
    _, frames, _ = talk
    folder = tmp_path / "videos"
    folder.mkdir()
    _write_video(folder / "mute.mp4", frames[:25], None, fps=25, rate=16000)
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'mute.mp4'))}: no audio"):
        prepare_footage(folder, tmp_path / "out", "tiny")
    argv = ["pipeline", "prepare-footage", "--videos", str(folder), "--data", str(tmp_path / "o")]
    monkeypatch.setattr(sys, "argv", [*argv, "--preset", "tiny"])
    with pytest.raises(SystemExit) as exit_:
        pipeline_main()
    assert exit_.value.code == 2 and "mute.mp4: no audio track" in capsys.readouterr().err


FOOTAGE_BUDGETS = dict(
    preset="tiny",
    device="cpu",
    vae_seconds=1.0,
    vae_decoder_seconds=1.0,
    vae_chunks=1,
    vae_batch=2,
    stage1_seconds=1.0,
    stage2_seconds=1.0,
    stage3_seconds=1.0,
    latent_clips=4,
    clip_chunks=4,
    batch=4,
    distill_batch=2,
    teacher_micro_steps=2,
)


def test_the_pipeline_trains_on_footage_without_probe_or_evaluation(prepared, tmp_path):
    out, _ = prepared
    cfg = PipelineConfig(
        data=str(out),
        workdir=str(tmp_path / "w"),
        checkpoint=str(tmp_path / "ckpt"),
        anchor_temperature=0.0,
        **FOOTAGE_BUDGETS,
    )
    summary = run_pipeline(cfg)
    assert summary["vae"]["steps"] > 0 and summary["stage3"]["steps"] > 0
    assert summary["vae_decoder"]["heldout"]["clips"] == 4  # on the held-out footage
    assert set(summary["skipped"]) == {"probe", "eval"}
    assert "probe" not in summary and "eval" not in summary
    assert not (tmp_path / "w" / "probe.pt").exists()
    latents = torch.load(tmp_path / "w" / "latents.pt")
    assert latents["latents"].shape[:2] == (4, 13) and latents["identity"] is None
    bundle = load_checkpoint(tmp_path / "ckpt")
    assert bundle.probe is None and bundle.config.name == "tiny"
    # it anchors prompts on the phrasings of the training footage, per channel
    phrasings = {"gesture": ["waves hello", "points ahead"], "face": ["smiles warmly"]}
    assert FootageClips(out).training_phrasings() == phrasings
    assert bundle.sampling["prompt_anchors"] == {"temperature": 0.0, "prompts": phrasings}
    # its reference image: the held-out video's reference frame (grey 150)
    image = decode_jpeg((tmp_path / "ckpt" / "reference.png").read_bytes())
    assert np.array_equal(image, np.load(out / "count.frames.npy")[25])
    # a run on footage goes on from that checkpoint, which has no probe to take
    more = replace(
        cfg,
        workdir=str(tmp_path / "more"),
        checkpoint=str(tmp_path / "more_ckpt"),
        init_from=str(tmp_path / "ckpt"),
        init_dit=True,
        vae_decoder_seconds=0.0,
        stage3_seconds=0.0,
    )
    went_on = run_pipeline(more)
    assert went_on["stage1"]["steps"] == 1 and went_on["stage2"]["steps"] > 0
    assert "eval" not in went_on and not (tmp_path / "more" / "probe.pt").exists()


def test_a_footage_run_names_what_it_cannot_do_before_training(prepared, tmp_path):
    out, folder = prepared
    cfg = PipelineConfig(data=str(out), workdir=str(tmp_path / "w"), **FOOTAGE_BUDGETS)
    with pytest.raises(ValueError, match="vae_control_weight reads .* footage has none"):
        run_pipeline(replace(cfg, vae_control_weight=0.5))
    with pytest.raises(ValueError, match="behavior_weight reads the behavior each prompt .* none"):
        run_pipeline(replace(cfg, behavior_weight=0.5))
    with pytest.raises(ValueError, match="prompt_mix reads which phrasings command the same"):
        run_pipeline(replace(cfg, prompt_mix=0.5))
    vae_cfg = VAETrainConfig(preset="tiny", size=(32, 32), chunks=1, control_weight=0.5)
    with pytest.raises(ValueError, match="ground-truth controls, which only the synthetic world"):
        train_vae(vae_cfg, None, torch.device("cpu"), FootageClips(out), progress=False)
    with pytest.raises(ValueError, match=r"prepared at 32x32 for 'tiny'; 'demo' renders 128x128"):
        run_pipeline(replace(cfg, preset="demo"))
    train_only = tmp_path / "train_only"
    train_only.mkdir()
    shutil.copyfile(folder / "talk.mp4", train_only / "talk.mp4")
    prepare_footage(train_only, tmp_path / "prepared", "tiny")
    unannotated = replace(cfg, data=str(tmp_path / "prepared"), anchor_temperature=0.0)
    with pytest.raises(ValueError, match="train videos carry none: annotate prompts"):
        run_pipeline(unannotated)
    with pytest.raises(ValueError, match='holds no eval footage: mark held-out videos "split"'):
        run_pipeline(replace(cfg, data=str(tmp_path / "prepared")))
    assert not (tmp_path / "w" / "vae").exists()
