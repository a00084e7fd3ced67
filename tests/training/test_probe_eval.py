"""The pose probe reads the world's renders back (held-out identities); the checkpoint export
round-trips; `run_eval` produces its table and reports on a tiny model; the shipped demo
checkpoint, when present, loads and starts from its reference identity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import structlog
import torch

from flowact.renderer.model import FlowActMMDiT
from flowact.renderer.training import behaviors as bh
from flowact.renderer.training import world
from flowact.renderer.training.behavior_metrics import confusion_hits
from flowact.renderer.training.evaluate import EvalConfig, lipsync_bands, run_eval
from flowact.renderer.training.export import (
    TRAINED_KEY,
    Bundle,
    checkpoint_bytes,
    export_checkpoint,
    load_checkpoint,
    phrasings_record,
    trained_phrasings,
)
from flowact.renderer.training.probe import (
    PoseProbe,
    ProbeConfig,
    probe_loss,
    read_frames,
)
from flowact.renderer.training.report import (
    EvalReport,
    channel_bars,
    compare_table,
    plot_channels,
    plot_comparison,
)
from flowact.renderer.weights import read_index, read_sampling
from flowact.schemas import timebase as tb

DEMO = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"
SIZE = (48, 48)


@pytest.fixture(scope="module")
def trained_probe() -> PoseProbe:
    """A small probe fitted for a few seconds on a fixed set of random-control renders."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 4096  # fewer renders and the probe memorises them
    ident = world.sample_identities(n, "train", 1)
    controls = torch.from_numpy(bh.random_controls(n, rng))
    frames = world.render(ident, controls[:, None], SIZE)[:, 0]
    targets = world.identity_targets(ident)
    probe = PoseProbe(ProbeConfig(size=SIZE, width=16, hidden=128))
    opt = torch.optim.AdamW(probe.parameters(), lr=3e-3)
    for _ in range(400):
        idx = torch.randint(n, (64,))
        loss = probe_loss(probe, frames[idx], controls[idx], targets[idx], 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe.eval()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_probe_reads_held_out_renders(trained_probe):
    rng = np.random.default_rng(9)
    ident = world.sample_identities(128, "eval", 0)
    controls = torch.from_numpy(bh.random_controls(128, rng))
    out = read_frames(trained_probe, world.render(ident, controls[:, None], SIZE))
    got = out.controls[:, 0]
    # the coarse controls; the mouth and eyes take more than a CPU test's seconds at 48x48
    # (the pipeline's probe reports every control's r on the GPU)
    for name in ("yaw", "pitch", "roll", "l_raise", "r_raise", "lean"):
        k = bh.C[name]
        assert _corr(got[:, k], controls[:, k]) > 0.6, name
    truth = world.identity_targets(ident)
    skin = _corr(out.identity[:, 0, 0], truth[:, 0])  # skin red channel
    assert skin > 0.6


def _tiny_bundle(probe) -> Bundle:
    from flowact.renderer.engine import audio_encoder_for
    from flowact.renderer.presets import get_preset
    from flowact.renderer.vae import build_vae

    torch.manual_seed(0)
    config = get_preset("tiny")
    model = FlowActMMDiT(config)
    vae = build_vae("tiny")
    audio = audio_encoder_for(config, "tiny")
    return Bundle(config, model, vae, audio, probe, {"micro_steps": 1, "guidance": 2.0})


def test_a_balanced_probe_loss_weighs_each_control_by_its_spread():
    from flowact.renderer.training.probe import CONTROL_STD

    assert CONTROL_STD.shape == (len(bh.CONTROLS),) and (CONTROL_STD > 0.1).all()
    probe = PoseProbe(ProbeConfig(size=(32, 32), width=8, hidden=32)).eval()
    frames = torch.zeros(4, 3, 32, 32)
    with torch.no_grad():
        out = probe(frames)
        ident = out.identity.clone()
        brows = out.controls.clone()
        brows[:, bh.C["brows"]] += 0.5  # the same error on a narrow and on a wide control
        gaze = out.controls.clone()
        gaze[:, bh.C["gaze_x"]] += 0.5
        plain = [probe_loss(probe, frames, c, ident, 0.5).item() for c in (brows, gaze)]
        fair = [probe_loss(probe, frames, c, ident, 0.5, True).item() for c in (brows, gaze)]
    assert plain[0] == pytest.approx(plain[1])
    ratio = (CONTROL_STD[bh.C["gaze_x"]] / CONTROL_STD[bh.C["brows"]]).item() ** 2
    assert fair[0] / fair[1] == pytest.approx(ratio, rel=1e-4) and ratio > 1.5


def test_a_probe_batch_maps_its_decoded_share_and_the_score_reads_mapped_renders(trained_probe):
    from flowact.renderer.training.probe import ProbeTrainConfig, score_probe, training_batch

    def blank(frames: torch.Tensor) -> torch.Tensor:  # a "decoder" that keeps nothing
        return torch.zeros_like(frames)

    for share, mapped in ((0.0, 0), (0.25, 2), (0.5, 4), (1.0, 8)):
        train = ProbeTrainConfig(batch=8, decoded_share=share)
        frames, controls, _ = training_batch(
            train, (32, 32), np.random.default_rng(0), "cpu", blank
        )
        assert frames.shape == (8, 3, 32, 32) and controls.shape == (8, len(bh.CONTROLS))
        blanked = frames.flatten(1).abs().amax(1) == 0
        assert blanked.tolist() == [True] * mapped + [False] * (8 - mapped), share
    with pytest.raises(ValueError, match="decoded_share must be within"):
        ProbeTrainConfig(decoded_share=1.5)
    # the same renders, read as they are, unchanged, and with the picture gone
    plain = score_probe(trained_probe, n=128)
    same = score_probe(trained_probe, n=128, transform=lambda f: f.clone())
    gone = score_probe(trained_probe, n=128, transform=blank)
    assert same.control_corr == pytest.approx(plain.control_corr)
    assert same.identity_corr == pytest.approx(plain.identity_corr)
    assert plain.control_corr["yaw"] > 0.6 and abs(gone.control_corr["yaw"]) < 0.2
    assert gone.identity_rank1 < plain.identity_rank1


def test_export_round_trip_in_bfloat16(tmp_path):
    probe = PoseProbe(ProbeConfig(size=(32, 32), width=8, hidden=32))
    b = _tiny_bundle(probe)
    export_checkpoint(tmp_path, b.model, b.vae, b.audio, probe, b.sampling)
    index = read_index(tmp_path)
    assert set(index["parts"]) == {"dit", "vae", "audio", "probe"}
    loaded = load_checkpoint(tmp_path)
    assert loaded.sampling == b.sampling and loaded.config == b.config
    for name, value in b.model.state_dict().items():
        got = loaded.model.state_dict()[name]
        assert torch.allclose(got, value, rtol=1e-2, atol=1e-3), name
    dtypes = {e["dtype"] for e in index["parts"]["dit"]["tensors"].values()}
    assert dtypes == {"bfloat16", "float32"}  # large tensors halved, small ones kept
    full = sum(v.numel() * 4 for m in (b.model, b.vae, b.audio) for v in m.state_dict().values())
    assert checkpoint_bytes(tmp_path) < 0.7 * full


def test_run_eval_writes_a_table_and_reports(tmp_path):
    torch.manual_seed(0)  # an untrained probe, the same one on every run
    probe = PoseProbe(ProbeConfig(size=(32, 32), width=8, hidden=32)).eval()
    bank = [np.random.default_rng(i).normal(0, 0.1, 16000).astype(np.float32) for i in range(3)]
    from flowact.renderer.training import speech

    bank_path = tmp_path / "bank.npz"
    speech.save_bank(bank_path, bank)
    cfg = EvalConfig(
        seconds=3.0, identities=2, bin_seconds=1.0, speech_bank=str(bank_path), film_seconds=(0.5,)
    )
    bundle = _tiny_bundle(probe)
    bundle.sampling[TRAINED_KEY] = bh.training_phrasings()  # the record a run writes
    with structlog.testing.capture_logs() as logs:
        report = run_eval(bundle, tmp_path / "eval", cfg)
    # the report says how many phrasings the checkpoint was trained on
    trained = sum(len(b.prompts) for b in bh.BEHAVIORS)
    assert report.config["trained_phrasings"] == trained
    assert EvalReport.load(tmp_path / "eval").config["trained_phrasings"] == trained
    # an untrained probe errs beyond some of the classifier's scales, and the run says which
    beyond = {
        (channel, name)
        for channel, features in report.probe_error.items()
        for name, f in features.items()
        if f["error"] > f["scale"]
    }
    warned = {
        (e["channel"], e["feature"])
        for e in logs
        if e["event"] == "behavior_feature_within_probe_error"
    }
    assert beyond and warned == beyond
    assert set(report.overall) == {
        "lipsync",
        "behavior",
        "identity_drift",
        "control_jitter",
        "seam_ratio",
    }
    assert set(report.behavior_channels) == set(bh.BEHAVIOR_CHANNELS)
    assert set(report.vae["behavior_channels"]) == set(bh.BEHAVIOR_CHANNELS)
    # the VAE's figures are read off its own confusion tables, as the stream's are
    vae_tables = report.vae["behavior_confusion"]
    assert set(vae_tables) == set(bh.BEHAVIOR_CHANNELS)
    for channel, table in vae_tables.items():
        hits, windows = confusion_hits(table)
        assert windows > 0 and report.vae["behavior_channels"][channel] == hits / windows
    loaded = EvalReport.load(tmp_path / "eval")
    assert loaded.behavior_channels == report.behavior_channels
    assert set(report.behavior_confusion) == {"generated", "ground_truth"}
    assert set(report.behavior_confusion["generated"]) == set(bh.BEHAVIOR_CHANNELS)
    assert loaded.behavior_confusion == report.behavior_confusion
    assert (tmp_path / "eval" / "behavior_confusion.png").stat().st_size > 0
    # the features' levels count each commanded behavior's windows as the confusion does
    levels = report.behavior_features
    assert set(levels) == {"generated", "ground_truth", "prototype"}
    assert loaded.behavior_features == levels
    assert (tmp_path / "eval" / "behavior_features.png").stat().st_size > 0
    for channel, rows in levels["generated"].items():
        table = report.behavior_confusion["generated"][channel]
        assert {b: r["windows"] for b, r in rows.items()} == {
            b: sum(row.values()) for b, row in table.items() if sum(row.values())
        }
    # how often each phrasing was followed: held-out phrasings, each under its own behavior
    texts, _, heldout = bh.prompt_table()
    assert set(report.behavior_phrasings) == {"generated", "ground_truth"}
    assert loaded.behavior_phrasings == report.behavior_phrasings
    asked = {
        (name, phrasing)
        for rows in report.behavior_phrasings["generated"].values()
        for name, cells in rows.items()
        for phrasing in cells
    }
    assert asked and all(
        phrasing in {texts[i] for i in heldout[bh.BEHAVIOR_INDEX[name]]} for name, phrasing in asked
    )
    assert (
        "Phrasings followed least (windows read as commanded): "
        in (tmp_path / "eval" / "report.md").read_text()
    )
    assert str(loaded.behavior_onset) == str(report.behavior_onset)  # NaN: an empty bin
    onset = report.behavior_onset["generated"]
    assert len(onset["seconds"]) == len(onset["accuracy"]) == len(onset["windows"]) == 5
    assert str(loaded.behavior_linger) == str(report.behavior_linger)
    linger = report.behavior_linger["ground_truth"]
    assert linger["seconds"] == onset["seconds"] and len(linger["share"]) == 5
    assert loaded.probe_error == report.probe_error
    assert set(report.probe_error["face"]) == set(bh.feature_names("face"))
    assert (tmp_path / "eval" / "behavior_onset.png").stat().st_size > 0
    assert "| behavior: face |" in (tmp_path / "eval" / "report.md").read_text()
    assert len(report.bins["identity_drift"]["generated"]) >= 2
    assert report.overall["identity_drift"]["generated"] > 0
    table = (tmp_path / "eval" / "report.md").read_text()
    assert table.startswith("| metric |") and "through the VAE (20 s)" in table
    # the stream is 3 s, shorter than vae_seconds: one PSNR per second of it
    psnr = report.vae["psnr_by_second"]
    assert len(psnr) == 3 and all(np.isfinite(psnr)) and "VAE reconstruction PSNR" in table
    assert -1 <= report.vae["lipsync"] <= 1 and report.vae["identity_drift"] > 0
    assert (tmp_path / "eval" / "vae_psnr.png").stat().st_size > 0
    bands = report.vae["lipsync_bands"]
    assert set(bands) == {"vae", "ground_truth"}
    assert all(-1 <= r <= 1 for b in bands.values() for r in b.values())
    assert "Lip-sync at the latent rate / within latents: through the VAE" in table


def test_run_eval_reads_the_same_frames_with_another_probe(tmp_path):
    """Two checkpoints of different latent spaces carry different probes: `also` reads one
    stream with both, each report as if that probe had read the stream alone."""
    from flowact.renderer.training import speech

    bank_path = tmp_path / "bank.npz"
    speech.save_bank(bank_path, [np.random.default_rng(i).normal(0, 0.1, 16000) for i in range(3)])
    cfg = EvalConfig(
        seconds=2.0,
        identities=2,
        bin_seconds=1.0,
        speech_bank=str(bank_path),
        film_seconds=(0.5,),
        vae_seconds=1.0,
    )
    small = ProbeConfig(size=(32, 32), width=8, hidden=32)
    torch.manual_seed(0)
    mine = PoseProbe(small).eval()
    torch.manual_seed(1)
    other = PoseProbe(small).eval()
    bundle = _tiny_bundle(mine)
    both = run_eval(bundle, tmp_path / "both", cfg, also={"ckpts/other": other})
    alone = run_eval(bundle, tmp_path / "alone", cfg, probe=other)
    own = run_eval(bundle, tmp_path / "own", cfg)
    read = EvalReport.load(tmp_path / "both" / "probe-other")
    for got, want in ((read, alone), (both, own)):
        for part in ("overall", "bins", "behavior_confusion", "probe_error", "vae"):
            assert json.dumps(getattr(got, part)) == json.dumps(getattr(want, part)), part
    # the two probes read the frames differently, and each report says which read it
    assert json.dumps(read.overall) != json.dumps(both.overall)
    assert read.config["probe"] == "ckpts/other" and both.config["probe"] is None
    assert read.config["trained_phrasings"] is None  # this checkpoint keeps no record
    assert (tmp_path / "both" / "probe-other" / "behavior.png").stat().st_size > 0
    with pytest.raises(ValueError, match="share a folder"):
        run_eval(bundle, tmp_path / "clash", cfg, also={"a/other": other, "b/other": mine})
    assert not (tmp_path / "clash").exists()  # refused before any stream ran


def test_lipsync_splits_at_the_latent_rate():
    truth = np.random.default_rng(0).random((3, 48))  # 12 latents of 4 frames each
    held = truth.reshape(3, -1, 4).mean(-1).repeat(4, -1)  # each latent's mean, held
    bands = lipsync_bands(held, truth)
    assert bands["latent_rate"] == pytest.approx(1.0)
    assert np.isnan(bands["within_latent"])  # nothing moves inside a latent
    wiggle = truth - held + 0.5  # only what moves inside each latent
    bands = lipsync_bands(wiggle, truth)
    assert bands["within_latent"] == pytest.approx(1.0) and np.isnan(bands["latent_rate"])
    # a read one frame late keeps most of the latents' means and loses much of the rest
    late = lipsync_bands(np.roll(truth, 1, axis=1), truth)
    assert late["within_latent"] < late["latent_rate"]


def _commanded_streams(chunks: int, segment_chunks: tuple[int, int]):
    """3 streams of ground-truth controls under random commands: controls `[3, T, K]`,
    commanded behaviors `[3, T, P]`, the classifier's prototypes and its window."""
    rng = np.random.default_rng(0)
    frames = chunks * tb.FRAMES_PER_CHUNK
    cfg = bh.TimelineConfig(*segment_chunks, idle_prob=0.25, heldout=True)
    timelines = [bh.sample_timeline(frames, rng, cfg) for _ in range(3)]
    controls = np.stack([bh.controls_for(t, np.zeros(frames, np.float32), rng) for t in timelines])
    behavior = np.stack([t.behavior for t in timelines])
    return controls, behavior, bh.prototypes(), 2 * tb.FRAMES_PER_CHUNK


def test_behavior_accuracy_pools_the_channels_and_tells_them_apart():
    from flowact.renderer.training.behavior_metrics import (
        behavior_accuracy,
        behavior_by_channel,
        behavior_confusion,
        behavior_hits,
    )

    controls, behavior, protos, window = _commanded_streams(40, (3, 5))
    assert all(v > 0.9 for v in behavior_by_channel(controls, behavior, window, protos).values())
    flat = controls.copy()
    for name in ("smile", "brows", "eyes"):  # a face that never moves
        flat[..., bh.C[name]] = bh.neutral_controls(1)[0, bh.C[name]]
    by_channel = behavior_by_channel(flat, behavior, window, protos)
    assert by_channel["face"] < 0.7 and by_channel["posture"] > 0.9
    counts = behavior_hits(flat, behavior, window, protos)
    # the confusion counts the same windows: its diagonal is the hits, its sum the windows
    confusion = behavior_confusion(flat, behavior, window, protos)
    for channel, table in confusion.items():
        diagonal = sum(table[name][name] for name in table)
        assert (diagonal, sum(sum(row.values()) for row in table.values())) == counts[channel]
    assert set(confusion["face"]) == {
        "idle",
        *(bh.BEHAVIORS[b].name for b in bh.CHANNEL_BEHAVIORS["face"]),
    }
    smiles = confusion["face"][bh.BEHAVIORS[bh.CHANNEL_BEHAVIORS["face"][0]].name]
    assert sum(smiles.values()) > 0 and smiles["idle"] > max(
        v for k, v in smiles.items() if k != "idle"
    )  # a face that never moves is read as idle whatever it was told
    pooled = sum(h for h, _ in counts.values()) / sum(n for _, n in counts.values())
    assert behavior_accuracy(flat, behavior, window, protos) == (
        pooled,
        sum(n for _, n in counts.values()),
    )


def test_feature_levels_show_how_far_a_missed_behavior_fell_short():
    from flowact.renderer.training.behavior_metrics import (
        behavior_confusion,
        feature_levels_from,
        prototype_levels,
        steady_windows,
    )

    controls, behavior, protos, window = _commanded_streams(60, (3, 5))
    raise_both = bh.BEHAVIOR_INDEX["raise_both"]
    commanded = behavior[..., bh.BEHAVIOR_CHANNELS.index("gesture")] == raise_both  # [B, T]
    assert commanded.any()
    # arms that go only two thirds of the way up when both are asked to rise
    short = controls.copy()
    for arm in ("l_raise", "r_raise"):
        short[..., bh.C[arm]] = np.where(
            commanded, controls[..., bh.C[arm]] * 0.65, short[..., bh.C[arm]]
        )
    truth = feature_levels_from(steady_windows(controls, behavior, window, protos))
    missed = feature_levels_from(steady_windows(short, behavior, window, protos))
    proto = prototype_levels(protos)
    assert list(proto["gesture"]["raise_both"]) == bh.feature_names("gesture")
    assert proto["gesture"]["raise_both"]["mean l_raise"] == pytest.approx(0.85, abs=0.02)
    # the features a behavior sets are among those its channel's classifier reads
    own = bh.own_features(bh.BEHAVIORS[raise_both])
    assert own == ["mean l_raise", "mean r_raise", "mean l_bend", "mean r_bend"]
    assert bh.own_features(bh.BEHAVIORS[bh.BEHAVIOR_INDEX["nod"]]) == ["std pitch"]
    for b in bh.BEHAVIORS:
        assert set(bh.own_features(b)) <= set(bh.feature_names(b.channel)), b.name
    levels, lowered = truth["gesture"]["raise_both"], missed["gesture"]["raise_both"]
    # the same windows, counted as the confusion counts them
    table = behavior_confusion(short, behavior, window, protos)["gesture"]["raise_both"]
    assert lowered["windows"] == levels["windows"] == sum(table.values()) > 0
    assert levels["mean l_raise"] == pytest.approx(0.85, abs=0.03)
    assert lowered["mean l_raise"] == pytest.approx(0.65 * levels["mean l_raise"], rel=1e-6)
    assert lowered["mean l_bend"] == pytest.approx(levels["mean l_bend"])  # untouched
    assert table["spread"] > table["raise_both"]  # read as arms spread, two thirds up
    # other behaviors' windows keep their levels
    assert missed["gesture"]["wave"] == pytest.approx(truth["gesture"]["wave"])


def test_phrasing_reads_tell_a_phrasing_that_is_not_followed_from_one_that_is():
    from flowact.renderer.training.behavior_metrics import (
        behavior_confusion,
        phrasing_reads_from,
        steady_windows,
    )

    rng = np.random.default_rng(1)
    frames, window = 60 * tb.FRAMES_PER_CHUNK, 2 * tb.FRAMES_PER_CHUNK
    cfg = bh.TimelineConfig(3, 5, idle_prob=0.25, heldout=True)
    timelines = [bh.sample_timeline(frames, rng, cfg) for _ in range(3)]
    controls = np.stack([bh.controls_for(t, np.zeros(frames, np.float32), rng) for t in timelines])
    behavior = np.stack([t.behavior for t in timelines])
    prompt = np.stack([t.prompt for t in timelines])
    protos = bh.prototypes()
    texts, _, heldout = bh.prompt_table()
    raise_both = bh.BEHAVIOR_INDEX["raise_both"]
    ignored, followed = (texts[i] for i in heldout[raise_both])
    # arms that stop two thirds of the way up whenever one of the two phrasings asks
    short = controls.copy()
    asked = prompt[..., bh.BEHAVIOR_CHANNELS.index("gesture")] == heldout[raise_both][0]
    assert asked.any()
    for arm in ("l_raise", "r_raise"):
        short[..., bh.C[arm]] = np.where(
            asked, controls[..., bh.C[arm]] * 0.65, controls[..., bh.C[arm]]
        )
    reads = phrasing_reads_from(steady_windows(short, behavior, window, protos, prompt))
    rows = reads["gesture"]["raise_both"]
    assert set(rows) == {ignored, followed}
    assert rows[ignored]["windows"] > 0 and rows[ignored]["read"] == 0
    assert rows[followed]["read"] == rows[followed]["windows"] > 0
    # every phrasing is one the streams asked for, under its own behavior, and the windows
    # are the confusion's but for those whose phrasing changes inside them
    for channel, by_behavior in reads.items():
        table = behavior_confusion(short, behavior, window, protos)[channel]
        for name, cells in by_behavior.items():
            b = bh.BEHAVIOR_INDEX[name]
            assert set(cells) <= {texts[i] for i in heldout[b]}
            assert 0 < sum(c["windows"] for c in cells.values()) <= sum(table[name].values())
            assert sum(c["read"] for c in cells.values()) <= table[name][name]
    # without the prompts there is nothing to tell phrasings by
    assert phrasing_reads_from(steady_windows(short, behavior, window, protos)) == {}


def test_a_late_response_reads_low_right_after_the_command_and_catches_up():
    from flowact.renderer.training.behavior_metrics import (
        NO_SEGMENT,
        behavior_timing,
        previous_behavior,
        segment_starts,
    )

    behavior = np.array([[-1, -1, 3, 3, 3, 5, 5]])[..., None]  # [B=1, T=7, P=1]
    assert segment_starts(behavior)[0, :, 0].tolist() == [0, 0, 2, 2, 2, 5, 5]
    assert previous_behavior(behavior)[0, :, 0].tolist() == [NO_SEGMENT] * 2 + [-1] * 3 + [3] * 2
    controls, behavior, protos, window = _commanded_streams(60, (6, 10))
    on_time = behavior_timing(controls, behavior, window, protos, bins=4)
    late = np.concatenate([controls[:, :window].copy(), controls[:, :-window]], 1)  # 0.96 s late
    delayed = behavior_timing(late, behavior, window, protos, bins=4)
    prompt, slow = on_time["onset"], delayed["onset"]
    assert prompt["seconds"] == [0.0, 0.96, 1.92, 2.88]
    assert prompt["windows"] == slow["windows"] and min(prompt["windows"]) > 0
    assert min(prompt["accuracy"]) > 0.85  # the truth follows at once
    # a window right after the command shows what came before it; by the third it has caught up
    assert slow["accuracy"][0] < 0.4 < 0.85 < slow["accuracy"][2]
    # what came before, where it was a behavior, lingers in that first window and then is gone;
    # the truth lets go at once
    held, stuck = on_time["linger"], delayed["linger"]
    assert held["seconds"] == prompt["seconds"] and held["windows"] == stuck["windows"]
    assert 0 < held["windows"][0] < prompt["windows"][0]  # not after idle, nor the first segment
    assert max(held["share"]) < 0.05
    assert stuck["share"][0] > 0.5 and max(stuck["share"][1:]) < 0.05


def test_probe_error_shows_where_the_instruments_noise_meets_the_classifiers_scale():
    from flowact.renderer.training.behavior_metrics import probe_error

    truth, _, protos, window = _commanded_streams(10, (3, 5))
    exact = probe_error(truth, truth, window, protos)
    assert set(exact) == set(bh.BEHAVIOR_CHANNELS)
    assert list(exact["gesture"]) == bh.feature_names("gesture")
    assert all(f["error"] == 0 for ch in exact.values() for f in ch.values())
    scale = bh.classifier_scale("gesture", protos)
    assert [f["scale"] for f in exact["gesture"].values()] == pytest.approx(scale.tolist())
    # a probe that misreads the left forearm by a constant per window: only its feature errs,
    # by that constant's spread, which is beyond the classifier's scale for it
    noisy = truth.copy()
    offset = np.random.default_rng(0).normal(0, 0.2, (truth.shape[0], truth.shape[1] // window))
    noisy[..., bh.C["l_bend"]] += np.repeat(offset, window, axis=1)[:, : truth.shape[1]]
    errors = probe_error(noisy, truth, window, protos)
    bend = errors["gesture"]["mean l_bend"]
    assert bend["error"] == pytest.approx(offset.std(), rel=0.05) and bend["error"] > bend["scale"]
    others = [
        f["error"] for ch in errors.values() for name, f in ch.items() if "l_bend" not in name
    ]
    assert max(others) == 0


def test_eval_command_reads_with_another_checkpoints_probe(tmp_path):
    """--probe-from lends a probe, --text-table lends prompt embeddings (checked for shape)."""
    import os
    import subprocess
    import sys

    from flowact.renderer.training import speech

    probe = PoseProbe(ProbeConfig(size=(32, 32), width=8, hidden=32)).eval()
    b = _tiny_bundle(probe)
    export_checkpoint(tmp_path / "bare", b.model, b.vae, b.audio, None, b.sampling)
    export_checkpoint(tmp_path / "instrument", b.model, b.vae, b.audio, probe, b.sampling)
    bank = tmp_path / "bank.npz"
    speech.save_bank(bank, [np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)])
    cmd = [sys.executable, "-m", "flowact", "eval", "--checkpoint", str(tmp_path / "bare")]
    cmd += ["--seconds", "1", "--identities", "1", "--vae-seconds", "0"]
    cmd += ["--speech-bank", str(bank), "--out", str(tmp_path / "out")]

    def run(*extra: str) -> subprocess.CompletedProcess:
        wide = {**os.environ, "COLUMNS": "400"}  # the error box would wrap the long path
        return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=300, env=wide)

    refused = run()
    assert refused.returncode == 2 and "holds no probe" in refused.stderr
    assert "--probe-from" in refused.stderr
    assert run("--probe-from", str(tmp_path / "bare")).returncode == 2
    from flowact.renderer.engine import build_text_encoder

    table = build_text_encoder("auto", "tiny").encode(bh.prompt_table()[0])
    torch.save(table[:3], tmp_path / "short.pt")
    torch.save(table, tmp_path / "table.pt")
    instrument = ["--probe-from", str(tmp_path / "instrument")]
    short = run(*instrument, "--text-table", str(tmp_path / "short.pt"))
    assert short.returncode == 2 and "expected a tensor of shape" in short.stderr
    assert str(tuple(table[:3].shape)) in short.stderr
    done = run(*instrument, "--seed", "2", "--text-table", str(tmp_path / "table.pt"))
    assert done.returncode == 0, done.stderr
    assert "| behavior: gaze |" in done.stdout
    report = EvalReport.load(tmp_path / "out")
    assert report.config["seconds"] == 1.0 and report.config["seed"] == 2


@pytest.mark.skipif(not (DEMO / "index.json").is_file(), reason="no shipped demo checkpoint")
def test_shipped_checkpoint_starts_from_its_reference():
    """The demo checkpoint's first second of stream (2 chunks: DiT, 3 NFE, decoded) reads,
    through its probe, as closer to its own reference than to the other unseen characters'.
    (The model card has the distances, and those of the first chunk alone.)"""
    from flowact.renderer.engine import build_text_encoder
    from flowact.renderer.training import evaluate as ev
    from flowact.renderer.training import speech

    bundle = load_checkpoint(DEMO)
    assert bundle.probe is not None and bundle.sampling["micro_steps"] == 1
    cfg = EvalConfig(seconds=1.0, identities=4, seed=3, film_seconds=())
    rng = np.random.default_rng(0)
    streams = ev.make_streams(cfg, [speech.syllable_speech(2.0, rng) for _ in range(2)])
    table = build_text_encoder("auto", "demo").encode(bh.prompt_table()[0])
    (readings,) = ev.generate_and_read(bundle, [bundle.probe], streams, table, cfg)
    first = readings.gen_identity[:, : 2 * tb.FRAMES_PER_CHUNK].mean(1)  # [4, D] the first second
    dist = np.linalg.norm(first[:, None] - readings.ref_identity[None], axis=-1)
    assert (dist.argmin(1) == np.arange(4)).all()


@pytest.mark.skipif(not (DEMO / "index.json").is_file(), reason="no shipped demo checkpoint")
def test_the_shipped_probe_reads_rendered_gestures_as_commanded():
    """Ground truth, through the instrument: every gesture and idle arms, held and rendered on
    4 unseen characters, read by the shipped probe: at least 95% of the windows are classified
    as shown (all 24 are; without the classifier's floor, 22 were)."""
    bundle = load_checkpoint(DEMO)
    window = 2 * tb.FRAMES_PER_CHUNK
    protos = bh.prototypes(window)
    rng = np.random.default_rng(0)
    identity = world.sample_identities(4, "eval", seed=5)
    size = (bundle.config.height, bundle.config.width)
    lead = tb.FRAMES_PER_CHUNK  # a chunk of lead-in, then one window held
    frames = lead + window
    wins, want = [], []
    for b in (None, *bh.CHANNEL_BEHAVIORS["gesture"]):
        tl = bh.constant_timeline(frames, {} if b is None else {"gesture": bh.BEHAVIORS[b].name})
        ctrl = np.stack([bh.controls_for(tl, np.zeros(frames, np.float32), rng) for _ in range(4)])
        read = read_frames(bundle.probe, world.render(identity, torch.from_numpy(ctrl), size))
        wins.append(read.controls[:, lead:].numpy())
        want += [-1 if b is None else b] * len(wins[-1])
    read, want = np.concatenate(wins), np.array(want)
    assert (bh.classify(read, "gesture", protos) == want).mean() >= 0.95


def _report(drift: list[float], lipsync: float, seconds: float = 600.0) -> EvalReport:
    bins = {"identity_drift": {"generated": drift, "ground_truth": [0.5] * len(drift)}}
    overall = {
        "lipsync": {"generated": lipsync, "ground_truth": 0.97},
        "identity_drift": {"generated": float(np.mean(drift)), "ground_truth": 0.5},
    }
    return EvalReport(overall, bins, 30.0, {"seconds": seconds})


def test_reports_compare_side_by_side(tmp_path):
    # 30 s bins: bin 1 holds minute 0.5, bin 10 minute 5
    rising = _report([1.0, 2.0] + [3.0] * 8 + [5.0] * 10, 0.25)
    short = _report([1.0, 1.5, 1.5], -0.125, seconds=90.0)  # ends before minute 5: no ratio
    (tmp_path / "rising").mkdir()
    (tmp_path / "rising" / "report.json").write_text(rising.to_json())
    loaded = EvalReport.load(tmp_path / "rising")
    assert loaded.bins == rising.bins and loaded.overall == rising.overall
    table = compare_table({"rising": loaded, "short": short}).splitlines()
    assert table[0] == "| metric | rising | short | ground truth |"
    assert "| lipsync | 0.250 | -0.125 | 0.970 |" in table
    assert table[-3] == "| drift min 5 / min 0.5 | 2.50 |  | 1.00 |"
    assert table[-2] == "| drift, min 0-5 | 2.700 |  | 0.500 |"
    assert table[-1] == "| drift, min 5-10 | 5.000 |  | 0.500 |"
    png = plot_comparison({"rising": loaded, "short": short}, "identity_drift", tmp_path / "d.png")
    channels = {"generated": 0.5, "ground_truth": 0.9}
    for report in (rising, short):
        report.overall["behavior"] = {"generated": 0.4, "ground_truth": 0.9}
        report.behavior_channels = {ch: dict(channels) for ch in bh.BEHAVIOR_CHANNELS}
    bars = plot_channels({"rising": rising, "short": short}, tmp_path / "channels.png")
    assert bars.stat().st_size > 0
    # through the VAE: each run's ceiling beside the first run's ground truth, by channel
    groups, series = channel_bars({"rising": rising, "short": short})
    assert groups == ["all", *bh.BEHAVIOR_CHANNELS] and series["rising"][0] == 0.4
    with pytest.raises(ValueError, match="no ground truth through the VAE in rising, short"):
        channel_bars({"rising": rising, "short": short}, through_vae=True)
    ceiling = dict(zip(bh.BEHAVIOR_CHANNELS, (0.6, 0.7, 0.8, 0.9), strict=True))
    rising.vae = {"behavior": 0.75, "behavior_channels": ceiling}
    with pytest.raises(ValueError, match="no ground truth through the VAE in short"):
        channel_bars({"rising": rising, "short": short}, through_vae=True)
    groups, series = channel_bars({"rising": rising}, through_vae=True)
    assert series["rising"] == [0.75, *(ceiling[c] for c in groups[1:])]
    assert series["ground truth"] == [0.9] * len(groups)
    vae_png = plot_channels({"rising": rising}, tmp_path / "vae.png", through_vae=True)
    assert vae_png.stat().st_size > 0
    assert png.stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="no evaluation report at"):
        EvalReport.load(tmp_path / "nothing")


def test_compare_command_prints_the_table_and_names_bad_runs(tmp_path):
    import subprocess
    import sys

    def compare(*args: str):
        return subprocess.run(
            [sys.executable, "-m", "flowact", "compare", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    for name, lip in (("a", 0.5), ("b", 0.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(_report([1.0, 1.0, 1.0], lip).to_json())
    done = compare("a=a", "b=b", "--out", "c.png")
    assert done.returncode == 0, done.stderr
    assert "| lipsync | 0.500 | 0.250 | 0.970 |" in done.stdout
    assert (tmp_path / "c.png").stat().st_size > 0
    # runs whose reports hold no channels cannot be drawn by channel, and say so
    no_channels = compare("a=a", "--out", "c.png", "--channels", "x.png")
    assert no_channels.returncode == 2 and "no behavior channels in a" in no_channels.stderr
    # nor by feature levels, which reports written before them lack
    no_levels = compare("a=a", "--out", "c.png", "--features", "f.png")
    assert no_levels.returncode == 2 and "no behavior_features in a" in no_levels.stderr
    assert not (tmp_path / "f.png").exists()
    from flowact.renderer.training.behavior_metrics import (
        feature_levels_from,
        prototype_levels,
        steady_windows,
    )

    controls, behavior, protos, window = _commanded_streams(20, (3, 5))
    levels = feature_levels_from(steady_windows(controls, behavior, window, protos))
    report = _report([1.0, 1.0, 1.0], 0.5)
    report.behavior_features = {
        "generated": levels,
        "ground_truth": levels,
        "prototype": prototype_levels(protos),
    }
    (tmp_path / "a" / "report.json").write_text(report.to_json())
    drawn = compare("a=a", "--out", "c.png", "--features", "f.png")
    assert drawn.returncode == 0, drawn.stderr
    assert "features in f.png" in drawn.stdout and (tmp_path / "f.png").stat().st_size > 0
    # nor by phrasing, which reports written before it lack
    no_phrasings = compare("a=a", "b=b", "--phrasings")
    assert no_phrasings.returncode == 2 and "no behavior_phrasings in a, b" in no_phrasings.stderr
    cell = {"windows": 4, "read": 3}
    report.behavior_phrasings = {
        kind: {"gesture": {"wave": {"greets with a waving hand": dict(cell)}}}
        for kind in ("generated", "ground_truth")
    }
    (tmp_path / "a" / "report.json").write_text(report.to_json())
    by_phrasing = compare("a=a", "--phrasings")
    assert by_phrasing.returncode == 0, by_phrasing.stderr
    assert "| wave | greets with a waving hand | 3/4 | 3/4 |" in by_phrasing.stdout
    # a run may not take the name of the plot's own series
    clash = compare("prototype=a", "--features", "g.png")
    assert clash.returncode == 2 and "rename the run" in clash.stderr
    # --through-vae draws the channels' PNG, so it needs --channels
    alone = compare("a=a", "--through-vae")
    assert alone.returncode == 2 and "needs --channels, the PNG it draws" in alone.stderr
    bad = compare("a")
    assert bad.returncode == 2 and "'a' is not NAME=DIR" in bad.stderr
    gone = compare("x=none")
    assert gone.returncode == 2 and "no evaluation report at" in gone.stderr


def test_training_phrasings_give_the_same_behaviors_at_the_same_times():
    from flowact.renderer.training import evaluate as ev
    from flowact.renderer.training import speech

    rng = np.random.default_rng(0)
    bank = [speech.syllable_speech(2.0, rng) for _ in range(2)]
    _, train, heldout = bh.prompt_table()
    streams = {
        p: ev.make_streams(EvalConfig(seconds=30.0, identities=2, prompts=p), bank)
        for p in ("heldout", "train")
    }
    for held, trained in zip(streams["heldout"].timeline, streams["train"].timeline, strict=True):
        assert np.array_equal(held.behavior, trained.behavior) and (held.behavior >= 0).any()
        for timeline, ids in ((held, heldout), (trained, train)):
            on = timeline.behavior >= 0
            for b, p in zip(timeline.behavior[on], timeline.prompt[on], strict=True):
                assert p in ids[b]
    assert np.array_equal(streams["heldout"].controls, streams["train"].controls)
    with pytest.raises(ValueError, match="prompts must be 'heldout' or 'train', not 'both'"):
        ev.make_streams(EvalConfig(seconds=1.0, identities=1, prompts="both"), bank)


def test_training_phrasings_come_from_those_the_checkpoint_was_trained_on():
    from flowact.renderer.training import evaluate as ev
    from flowact.renderer.training import speech

    rng = np.random.default_rng(0)
    bank = [speech.syllable_speech(2.0, rng) for _ in range(2)]
    texts, train, heldout = bh.prompt_table()
    # a checkpoint that trained on each behavior's first two phrasings alone
    trained = frozenset(texts[i] for ids in train.values() for i in ids[:2])
    cfg = EvalConfig(seconds=60.0, identities=2, prompts="train")
    every, only = ev.make_streams(cfg, bank), ev.make_streams(cfg, bank, trained)
    drawn = set()
    for a, b in zip(every.timeline, only.timeline, strict=True):
        assert np.array_equal(a.behavior, b.behavior)
        drawn |= {texts[i] for i in np.unique(b.prompt) if i >= 0}
    assert np.array_equal(every.controls, only.controls)
    assert drawn <= trained and len(drawn) > len(bh.BEHAVIORS)
    unseen = {texts[i] for t in every.timeline for i in np.unique(t.prompt) if i >= 0} - trained
    assert unseen  # with no record, phrasings it never saw come in
    # the held-out phrasings read as before, once none of them was trained on
    held = EvalConfig(seconds=60.0, identities=2)
    assert np.array_equal(
        ev.make_streams(held, bank).timeline[0].prompt,
        ev.make_streams(held, bank, trained).timeline[0].prompt,
    )
    smile = bh.BEHAVIOR_INDEX["smile"]
    with pytest.raises(ValueError, match="none of the training phrasings of smile is among"):
        ev.make_streams(cfg, bank, trained - {texts[i] for i in train[smile]})
    leak = trained | {texts[heldout[smile][0]]}
    with pytest.raises(ValueError, match="1 held-out phrasings are among those trained on"):
        ev.make_streams(held, bank, leak)


def test_a_checkpoint_records_the_phrasings_it_was_trained_on():
    earlier = {"face": ["grins", "smiles"]}  # the record of the checkpoint it started from
    record = phrasings_record({"face": ["smiles"], "gaze": ["looks up"]}, earlier)
    assert record == {"face": ["smiles", "grins"], "gaze": ["looks up"]}
    assert phrasings_record({"face": ["smiles"]}) == {"face": ["smiles"]}
    assert trained_phrasings({TRAINED_KEY: record}) == {"smiles", "grins", "looks up"}
    assert trained_phrasings({"guidance": 2.5}) is None  # exported before the record was kept
    for bad in ({"face": "smiles"}, ["smiles"], {"face": [1]}):
        with pytest.raises(ValueError, match="trained_phrasings must map behavior channels"):
            trained_phrasings({TRAINED_KEY: bad})


@pytest.mark.skipif(not (DEMO / "index.json").is_file(), reason="no shipped demo checkpoint")
def test_the_shipped_checkpoint_never_trained_on_a_held_out_phrasing():
    texts, train, heldout = bh.prompt_table()
    trained = trained_phrasings(read_sampling(DEMO))
    assert trained is not None
    assert trained <= {texts[i] for ids in train.values() for i in ids}
    assert not trained & {texts[i] for ids in heldout.values() for i in ids}
    # and each behavior can be asked for in words it was trained on
    assert all(any(texts[i] in trained for i in ids) for ids in train.values())
