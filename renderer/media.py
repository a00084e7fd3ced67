"""Images in and out of the renderer: reference images and JPEG frames."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError


def load_reference(data: bytes, height: int, width: int) -> np.ndarray:
    """PNG/JPEG bytes -> `[height, width, 3]` uint8, centre-cropped to the aspect, then resized."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"reference image cannot be decoded: {err}") from None
    return fit_image(image, height, width)


def fit_image(image: Image.Image, height: int, width: int) -> np.ndarray:
    """`image` centre-cropped to the aspect of `height` x `width`, then resized to it:
    `[height, width, 3]` uint8. Reference images go through it, and so do the frames of footage
    prepared for training (`renderer.training.footage`), so that the two look alike."""
    image = image.convert("RGB")
    scale = min(image.width / width, image.height / height)
    crop_w, crop_h = round(width * scale), round(height * scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)


def encode_jpeg(frames: np.ndarray, quality: int) -> list[bytes]:
    """Frames `[T, H, W, 3]` uint8 -> one JPEG each."""
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> `[H, W, 3]` uint8."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """`[H, W, 3]` uint8 -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def contact_sheet(
    frames: list[np.ndarray], columns: int = 8, labels: list[str] | None = None
) -> np.ndarray:
    """Frames `[H, W, 3]` laid out in a grid, each with an optional caption under it."""
    if not frames:
        raise ValueError("a contact sheet needs at least one frame")
    height, width = frames[0].shape[:2]
    caption = 14 if labels else 0
    rows = -(-len(frames) // columns)
    sheet = Image.new("RGB", (columns * width, rows * (height + caption)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, frame in enumerate(frames):
        x, y = (i % columns) * width, (i // columns) * (height + caption)
        sheet.paste(Image.fromarray(frame), (x, y))
        if labels:
            draw.text((x + 3, y + height + 1), labels[i], fill=(220, 220, 220))
    return np.asarray(sheet)
