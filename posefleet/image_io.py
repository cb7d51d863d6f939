"""Decode image bytes once, safely: sniff the format, read the size from the header, refuse
decompression bombs and truncated files before OpenCV allocates anything.

JPEGs decode with libjpeg-turbo (``simplejpeg``, which bundles it), at full size or straight to 1/2, 1/4 or
1/8 through its DCT scaling (:class:`Picture`): the frame pipeline asks for the smallest scale its model
inputs need. OpenCV decodes PNGs, and JPEGs libjpeg-turbo refuses (CMYK, recoverable corruption).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from posefleet.errors import ImageError, ImageTooLarge, ImageTruncated

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


# a JPEG's frame header comes after a few segments (APPn, DQT, DHT...); real files have under 20, and
# fill bytes only between segments: the scan is bounded however the bytes were crafted
_MAX_JPEG_SEGMENTS = 64
_MAX_FILL = 64


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header, in bounded time (O(segments), not O(bytes))."""
    i, n = 2, len(data)
    for _ in range(_MAX_JPEG_SEGMENTS):
        if i + 4 > n:
            break
        if data[i] != 0xFF:
            raise ImageError("corrupt JPEG: bad marker")
        fill = 0
        while data[i + 1] == 0xFF:  # fill bytes before a marker
            i, fill = i + 1, fill + 1
            if fill > _MAX_FILL or i + 4 > n:
                raise ImageError("corrupt JPEG: a run of fill bytes")
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    else:
        raise ImageError(f"corrupt JPEG: no frame header within {_MAX_JPEG_SEGMENTS} segments")
    raise ImageTruncated("truncated or corrupt JPEG: no frame header")


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header alone."""
    fmt = sniff(data)
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageTruncated("truncated or corrupt PNG: no IHDR header")
        w, h = struct.unpack(">II", data[16:24])
        return fmt, w, h
    if fmt == "jpeg":
        return (fmt, *_jpeg_size(data))
    raise ImageError("not a JPEG or PNG image")


def check_header(data: bytes, max_pixels: int, max_side: int) -> tuple[str, int, int]:
    """Format and size limits from the header alone, in bounded time; ``data`` may be the start of the
    image only (ImageTruncated: the header goes on past it). Returns (format, w, h)."""
    if not data:
        raise ImageError("empty image")
    fmt, w, h = image_size(data)
    check_size(w, h, max_pixels, max_side)
    return fmt, w, h


def check_size(w: int, h: int, max_pixels: int, max_side: int) -> None:
    if w == 0 or h == 0:
        raise ImageError(f"image has zero size ({w}x{h})")
    if w > max_side or h > max_side or w * h > max_pixels:
        raise ImageTooLarge(f"image is {w}x{h}; the limit is {max_pixels} pixels and {max_side} px a side")


def check_image(data: bytes, max_pixels: int, max_side: int) -> tuple[str, int, int]:
    """Cheap checks before any decoding: format, size limits, truncation. Returns (format, w, h)."""
    fmt, w, h = check_header(data, max_pixels, max_side)
    tail = data[-32:]
    if fmt == "jpeg" and b"\xff\xd9" not in tail:
        raise ImageError("truncated JPEG: no end-of-image marker")
    if fmt == "png" and b"IEND" not in tail:
        raise ImageError("truncated PNG: no IEND chunk")
    return fmt, w, h


def decode_image(data: bytes, max_pixels: int, max_side: int) -> np.ndarray:
    """JPEG/PNG bytes -> BGR uint8 ``[H, W, 3]`` (grey and RGBA converted), or :class:`ImageError`."""
    fmt, _, _ = check_image(data, max_pixels, max_side)
    return decode_checked(data, fmt)


def decode_checked(data: bytes, fmt: str, factor: int = 1) -> np.ndarray:
    """Decode bytes that :func:`check_image` has already passed (its checks are not run twice), a JPEG at
    1/``factor`` of its size (1, 2, 4 or 8: libjpeg-turbo's DCT scaling, no resize after)."""
    if fmt == "jpeg":
        w, h = _jpeg_size(data)
        try:  # min sizes pick the scale: libjpeg-turbo takes the smallest one at least this large
            return simplejpeg.decode_jpeg(data, "BGR", min_width=-(-w // factor), min_height=-(-h // factor))
        except ValueError:
            pass  # what libjpeg-turbo will not decode cleanly, OpenCV's decoder tries as before
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}  # fmt: skip
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags[factor] if fmt == "jpeg" else cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"corrupt {fmt.upper()}: cannot be decoded")
    return image


# libjpeg-turbo's DCT scaling also offers 3/8, 5/8... but measured here only 1/2, 1/4 and 1/8 decode faster
JPEG_FACTORS = (8, 4, 2, 1)


@dataclass
class Picture:
    """A frame's pixels as they arrived (encoded bytes, or an image decoded where a camera was read) and,
    once decoded, at ``scale`` (image px per frame px). ``width`` and ``height`` are the frame's own size,
    in which every box and keypoint of its answer is given."""

    width: int
    height: int
    data: bytes | None = None
    fmt: str = "array"
    image: np.ndarray | None = None  # BGR uint8, at ``scale``
    scale: float = 1.0
    decode_ms: float = 0.0

    @classmethod
    def encoded(cls, data: bytes, fmt: str, width: int, height: int) -> Picture:
        """Bytes that :func:`check_image` passed, decoded later at the scale asked for."""
        return cls(width, height, data, fmt)

    @classmethod
    def decoded(cls, image: np.ndarray, decode_ms: float = 0.0) -> Picture:
        image = as_bgr(image)
        return cls(image.shape[1], image.shape[0], image=image, decode_ms=decode_ms)

    def factor_for(self, need: float, max_upscale: float = 1.0) -> int:
        """The largest JPEG scale-down factor whose pixels serve ``need`` (image px per frame px) with at most
        ``max_upscale`` of resampling up; 1 for PNGs and decoded images."""
        if self.fmt != "jpeg":
            return 1
        return next((f for f in JPEG_FACTORS[:-1] if max_upscale / f >= need), 1)

    def decode(self, need: float = 1.0, max_upscale: float = 1.0) -> np.ndarray:
        """The pixels at the smallest scale serving ``need`` (decoded once: later calls return them)."""
        if self.image is None:
            assert self.data is not None, "a picture has bytes or an image"
            t0 = time.perf_counter()
            factor = self.factor_for(need, max_upscale)
            self.image = decode_checked(self.data, self.fmt, factor)
            self.scale = self.image.shape[1] / self.width
            self.decode_ms = round((time.perf_counter() - t0) * 1000.0, 3)
        return self.image


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Grey, BGRA or BGR arrays (uint8) -> contiguous BGR uint8, for frames that arrive decoded."""
    if image.size == 0:
        raise ImageError("image has zero size")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise ImageError(f"unsupported image shape {image.shape}")


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("cannot encode JPEG")
    return buf.tobytes()
