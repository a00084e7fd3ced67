"""The compositor on synthetic tiles: layout pixels, audio mix, lockstep, a tile that lags."""

from __future__ import annotations

import asyncio

import numpy as np
from flowact_testing import collect

from flowact.bus.memory import MemoryBus
from flowact.bus.typed import publish
from flowact.renderer.compositor import (
    Canvas,
    Compositor,
    CompositorConfig,
    Tile,
    chunk_frames,
    mix,
)
from flowact.renderer.media import encode_png
from flowact.schemas import timebase as tb
from flowact.schemas.messages import ErrorEvent, StateEvent, VideoChunk

W, H = 6, 4  # tile size
GAP = 2
BACKGROUND = (10, 20, 30)
T = tb.FRAMES_PER_CHUNK


def chunk(index: int, base: int, level: int, *, w: int = W, h: int = H) -> VideoChunk:
    """Raw chunk: frame f is filled with `base + f` (red), `index` (green); audio = `level`."""
    frames = []
    for f in range(T):
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[..., 0], pixels[..., 1], pixels[..., 2] = base + f, index, 7
        frames.append(pixels.tobytes())
    audio = np.full(tb.SAMPLES_PER_CHUNK, level, "<i2").tobytes()
    return VideoChunk(
        index=index, first_frame=index * T, width=w, height=h, codec="raw", frames=frames,
        audio=audio, state="speaking" if level else "idle",
    )  # fmt: skip


def config(**kw) -> CompositorConfig:
    base = dict(columns=2, rows=1, gap=GAP, background=BACKGROUND, codec="raw", period_s=0.1,
                allowance_s=0.05, start_wait_s=0.5)  # fmt: skip
    return CompositorConfig(**(base | kw))


async def compose(bus, tiles, cfg, until, **kw) -> tuple[list[VideoChunk], object]:
    stop = asyncio.Event()
    compositor = Compositor(bus, "scene", tiles, cfg, **kw)
    task = asyncio.create_task(compositor.run(stop))
    try:
        out = await collect(bus, "scene", "video", until, timeout=20)
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 5)
    return out, stats


def region(frames: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    x, y = GAP + cell[0] * (W + GAP), GAP + cell[1] * (H + GAP)
    return frames[:, y : y + H, x : x + W]


TILES = [Tile("a", "a", (0, 0)), Tile("b", "b", (1, 0))]


async def test_tiles_side_by_side_in_lockstep_with_their_audio_summed() -> None:
    bus = MemoryBus()
    for k in range(6):
        await publish(bus, "a", chunk(k, 100, 1000 + k))
        loud = 32_000 if k == 3 else -300  # chunk 3: the sum is over full scale
        await publish(bus, "b", chunk(k, 200, loud))
    out, stats = await compose(bus, TILES, config(), lambda o: len(o) >= 6)

    assert [c.index for c in out] == list(range(6))
    for k, composed in enumerate(out):
        assert (composed.width, composed.height) == (2 * W + 3 * GAP, H + 2 * GAP)
        frames = chunk_frames(composed)  # [T, H, W, 3]
        for cell, base in (((0, 0), 100), ((1, 0), 200)):
            tile = region(frames, cell)
            assert (tile[..., 0] == (base + np.arange(T))[:, None, None]).all()  # frame by frame
            assert (tile[..., 1] == k).all()  # chunk k of both tiles: lockstep
        assert (frames[:, :GAP] == BACKGROUND).all() and (frames[:, :, W + GAP] == BACKGROUND).all()
        pcm = np.frombuffer(composed.audio, "<i2")
        want = 32_767 if k == 3 else 1000 + k - 300  # saturated, not wrapped around
        assert (pcm == want).all(), (k, pcm[:3])
    extra = stats.chunks - 6  # composed after the test stopped reading: nothing there to show
    assert stats.tiles["a"].shown == stats.tiles["b"].shown == 6
    assert stats.tiles["a"].held == stats.tiles["b"].held == extra


async def test_a_lagging_tile_holds_its_last_frame_the_scene_goes_on_and_reports_it() -> None:
    bus = MemoryBus()
    lag = range(3, 7)  # b's chunks 3..6 miss their deadlines; 3 and 4 come late, 5 and 6 never

    async def tiles() -> None:
        await publish(bus, "a", chunk(0, 100, 1000))
        await publish(bus, "b", chunk(0, 200, 50))
        for k in range(1, 12):  # each chunk one period ahead of its slot: never late
            await publish(bus, "a", chunk(k, 100, 1000))
            if k not in lag:
                await publish(bus, "b", chunk(k, 200, 50))
            if k == 8:
                for late in (3, 4):  # slot already composed: must be dropped
                    await publish(bus, "b", chunk(late, 150, 9999))
            await collect(bus, "scene", "video", lambda o, k=k: len(o) >= k, timeout=10)

    producer = asyncio.create_task(tiles())
    out, stats = await compose(bus, TILES, config(), lambda o: len(o) >= 12)
    await producer

    out = out[:12]
    assert [c.index for c in out] == list(range(12))  # no slot skipped, none twice
    last_shown = region(chunk_frames(out[2]), (1, 0))[-1]
    for k, composed in enumerate(out):
        frames = chunk_frames(composed)
        assert (region(frames, (0, 0))[..., 1] == k).all()  # a stays in step throughout
        b = region(frames, (1, 0))
        pcm = np.frombuffer(composed.audio, "<i2")
        if k in lag:
            assert (b == last_shown).all()  # held: b's last frame of chunk 2, every frame
            assert (pcm == 1000).all()  # and silence from b
        else:
            assert (b[..., 1] == k).all() and (pcm == 1050).all()
    extra = stats.chunks - 12  # composed after the producer ended: held for both
    b_stats = stats.tiles["b"]
    assert (b_stats.held, b_stats.dropped, b_stats.lags) == (4 + extra, 2, 1 + (extra > 0))
    assert stats.tiles["a"].held == extra
    events = await collect(bus, "scene", "events", lambda o: any(e.type == "error" for e in o))
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and "'b'" in errors[0].reason and "chunk 3" in errors[0].reason
    assert errors[0].stream == "flowact:b:video"
    started = [e for e in events if isinstance(e, StateEvent) and e.state == "started"]
    assert started and started[0].actor == "renderer" and started[0].frame == 0


async def test_a_tile_that_never_starts_shows_the_background_and_blocks_nothing() -> None:
    bus = MemoryBus()
    for k in range(4):
        await publish(bus, "a", chunk(k, 100, 0))
    out, stats = await compose(bus, TILES, config(start_wait_s=0.1), lambda o: len(o) >= 4)
    frames = chunk_frames(out[3])
    assert (region(frames, (1, 0)) == BACKGROUND).all()
    assert (region(frames, (0, 0))[..., 1] == 3).all()
    assert stats.tiles["b"].held == stats.chunks >= 4 and stats.tiles["b"].lags == 1


def test_grid_canvas_places_tiles_by_cell_over_a_background_image_and_scales_odd_sizes() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20] = (255, 0, 0)  # left half red, right half blue
    image[:, 20:] = (0, 0, 255)
    cfg = CompositorConfig(columns=2, rows=2, gap=1)
    canvas = Canvas(cfg, (W, H), encode_png(image))
    assert (canvas.width, canvas.height) == (2 * W + 3, 2 * H + 3)
    assert canvas.origin((1, 1)) == (W + 2, H + 2)
    big = chunk_frames(chunk(0, 50, 0, w=2 * W, h=2 * H))  # another size: scaled to the tile
    frames = canvas.compose([((1, 1), canvas.fit(big))])
    assert frames.shape == (T, canvas.height, canvas.width, 3)
    x, y = canvas.origin((1, 1))
    assert (frames[:, y : y + H, x : x + W, 0] == (50 + np.arange(T))[:, None, None]).all()
    assert tuple(frames[0, 0, 0]) == (255, 0, 0) and tuple(frames[0, 0, -1]) == (0, 0, 255)


def test_mix_sums_and_saturates_both_ways() -> None:
    n = tb.SAMPLES_PER_CHUNK
    a = np.full(n, 20_000, "<i2")
    b = np.full(n, 20_000, "<i2")
    c = np.full(n, -30_000, "<i2")
    assert (np.frombuffer(mix([a.tobytes(), b.tobytes()]), "<i2") == 32_767).all()
    assert (np.frombuffer(mix([c.tobytes(), c.tobytes()]), "<i2") == -32_768).all()
    assert (np.frombuffer(mix([a.tobytes(), c.tobytes()]), "<i2") == -10_000).all()
    assert not np.frombuffer(mix([]), "<i2").any()  # nobody: silence


async def test_when_every_tile_is_slow_the_clock_follows_the_first_and_nobody_is_held() -> None:
    bus = MemoryBus()

    async def tiles() -> None:  # both at a quarter of real time, b a little after a
        for k in range(6):
            await publish(bus, "a", chunk(k, 100, 10))
            await asyncio.sleep(0.01)
            await publish(bus, "b", chunk(k, 200, 20))
            await asyncio.sleep(0.19)

    producer = asyncio.create_task(tiles())
    out, stats = await compose(
        bus, TILES, config(allowance_s=0.1, period_s=0.05), lambda o: len(o) >= 6
    )
    await producer
    assert [c.index for c in out] == list(range(6))
    for k, composed in enumerate(out):
        frames = chunk_frames(composed)
        assert (region(frames, (0, 0))[..., 1] == k).all()
        assert (region(frames, (1, 0))[..., 1] == k).all(), k
        assert (np.frombuffer(composed.audio, "<i2") == 30).all()
    assert stats.tiles["a"].held == stats.tiles["b"].held == 0
    assert stats.slow == 1  # one report for the whole slow stretch
    events = await collect(bus, "scene", "events", lambda o: any(e.type == "error" for e in o))
    assert ["slower than real time" in e.reason for e in events if e.type == "error"] == [True]
