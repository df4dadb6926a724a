"""Real media made with PyAV for tests and the demo: videos (h264 / mpeg4 with aac audio), audio files
(wav / flac / ...), images (png / jpg), captions and a dataset.toml.

Frames carry their own index as a row of black/white bars (`read_frame_index` reads it back after
decoding, resizing and cropping), so tests can check exactly which frames a window extracted. The
audio is a tone whose pitch steps every `step_s` seconds, so a cut window can be located by pitch.
"""

from __future__ import annotations

import math
import wave
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

INDEX_BITS = 10  # frame indices up to 1023
_BAND = 0.4  # top share of the frame that holds the index bars


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    """RGB `[H, W, 3]` uint8 frame: index bars on top, a coloured square that moves below."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    band = max(1, int(height * _BAND))
    for bit in range(INDEX_BITS):
        if index >> bit & 1:
            x0, x1 = bit * width // INDEX_BITS, (bit + 1) * width // INDEX_BITS
            frame[:band, x0:x1] = 255
    # Lower part: a smooth background and a moving square, to look like video to an encoder.
    ys = np.linspace(0, 1, height - band)[:, None]
    xs = np.linspace(0, 1, width)[None, :]
    frame[band:, :, 0] = (80 + 100 * xs).astype(np.uint8)
    frame[band:, :, 1] = (60 + 120 * ys).astype(np.uint8)
    frame[band:, :, 2] = 128
    side = max(4, (height - band) // 3)
    x = int((index * 3) % max(1, width - side))
    y = band + (height - band - side) // 2
    frame[y : y + side, x : x + side] = (230, 200, 40)
    return frame


def read_frame_index(frame: np.ndarray) -> int:
    """Read back `frame_pixels`' index from an RGB frame `[H, W, 3]` (uint8, or float in [-1, 1] as
    `[3, H, W]`), after any resize that keeps the aspect ratio."""
    if frame.dtype != np.uint8:
        frame = np.asarray(frame, dtype=np.float32)
        if frame.shape[0] == 3:
            frame = frame.transpose(1, 2, 0)
        frame = ((frame + 1.0) * 127.5).clip(0, 255)
    height, width = frame.shape[:2]
    row = frame[int(height * _BAND / 2)].astype(np.float32).mean(axis=-1)
    index = 0
    for bit in range(INDEX_BITS):
        center = int((bit + 0.5) * width / INDEX_BITS)
        if row[center] > 127:
            index |= 1 << bit
    return index


def tone(num_samples: int, sample_rate: int, base_hz: float = 440.0, step_hz: float = 0.0,
         step_s: float = 1.0, amplitude: float = 0.5, start_s: float = 0.0) -> np.ndarray:
    """A sine whose frequency is `base_hz + step_hz * floor(t / step_s)`, float32 `[num_samples]`.
    The phase is continuous across steps (no clicks), so it is smooth for lossy codecs."""
    t = start_s + np.arange(num_samples) / sample_rate
    freq = base_hz + step_hz * np.floor(t / step_s)
    # phase at sample n sums the frequencies before it, so sample 0 has phase 0 at every rate
    phase = 2 * np.pi * (np.cumsum(freq) - freq) / sample_rate
    return (amplitude * np.sin(phase)).astype(np.float32)


def tone_frequency_at(t: float, base_hz: float = 440.0, step_hz: float = 0.0, step_s: float = 1.0) -> float:
    """The frequency `tone` plays at time `t`."""
    return base_hz + step_hz * math.floor(t / step_s)


def write_video(
    path: str | Path,
    num_frames: int,
    size: tuple[int, int] = (128, 96),
    fps: int | Fraction = 24,
    codec: str = "h264",
    audio: bool = True,
    audio_rate: int = 44100,
    audio_channels: int = 2,
    audio_seconds: float | None = None,
    base_hz: float = 440.0,
    step_hz: float = 110.0,
    step_s: float = 1.0,
    faststart: bool = False,
) -> Path:
    """Write a video of `num_frames` index-coded frames (`h264` or `mpeg4`), with an aac tone track
    lasting `audio_seconds` (default: as long as the video); `faststart` puts the mp4 index first, as
    web videos have it. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rate = Fraction(fps)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec in ("h264", "libx264"):
            stream.options = {"preset": "ultrafast", "crf": "18"}
        else:
            stream.bit_rate = 4_000_000
        audio_stream = None
        if audio:
            audio_stream = container.add_stream("aac", rate=audio_rate)
            audio_stream.layout = "stereo" if audio_channels == 2 else "mono"
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(index, width, height), format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            seconds = float(num_frames / rate) if audio_seconds is None else audio_seconds
            samples = tone(round(seconds * audio_rate), audio_rate, base_hz, step_hz, step_s)
            _encode_audio(container, audio_stream, np.tile(samples, (audio_channels, 1)), audio_rate)
    return path


def write_audio(
    path: str | Path,
    seconds: float,
    sample_rate: int = 48000,
    channels: int = 1,
    base_hz: float = 440.0,
    step_hz: float = 110.0,
    step_s: float = 1.0,
) -> Path:
    """Write a tone to an audio file; the codec follows the extension (wav = 16-bit PCM, flac, m4a =
    aac, mp3/ogg where FFmpeg has an encoder). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = {".wav": "pcm_s16le", ".flac": "flac", ".m4a": "aac", ".mp3": "libmp3lame", ".ogg": "libvorbis"}[
        path.suffix.lower()
    ]
    samples = tone(round(seconds * sample_rate), sample_rate, base_hz, step_hz, step_s)
    if samples.size == 0:
        if codec != "pcm_s16le":
            raise ValueError(f"{path}: an empty audio file can only be written as .wav")
        # FFmpeg writes no file for a stream without packets; a header-only wav is a real empty file.
        with wave.open(str(path), "wb") as empty:
            empty.setnchannels(channels)
            empty.setsampwidth(2)
            empty.setframerate(sample_rate)
        return path
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "stereo" if channels == 2 else "mono"
        _encode_audio(container, stream, np.tile(samples, (channels, 1)), sample_rate)
    return path


def _encode_audio(container, stream, samples: np.ndarray, sample_rate: int) -> None:
    """Encode float `[C, N]` samples in blocks; PyAV converts to the codec's sample format."""
    layout = "stereo" if samples.shape[0] == 2 else "mono"
    block = 4096
    for start in range(0, samples.shape[1], block):
        chunk = np.ascontiguousarray(samples[:, start : start + block], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_image(path: str | Path, size: tuple[int, int] = (128, 96), index: int = 0) -> Path:
    """Write an index-coded still (png, jpg, ... by extension) through PyAV. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = {".png": "png", ".jpg": "mjpeg", ".jpeg": "mjpeg", ".webp": "libwebp", ".bmp": "bmp"}[path.suffix.lower()]
    width, height = size
    pix_fmt = {"png": "rgb24", "mjpeg": "yuvj420p", "bmp": "bgr24", "libwebp": "yuv420p"}[codec]
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        frame = av.VideoFrame.from_ndarray(frame_pixels(index, width, height), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_caption(media_path: str | Path, text: str, extension: str = ".txt") -> Path:
    """Write the caption file beside a media file."""
    caption = Path(media_path).with_suffix(extension)
    caption.write_text(text, encoding="utf-8")
    return caption


def write_dataset_toml(path: str | Path, datasets: Sequence[dict], general: dict | None = None) -> Path:
    """Write a dataset.toml from plain dicts (strings, ints, bools, lists of those)."""
    lines = []
    if general:
        lines.append("[general]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in general.items()]
        lines.append("")
    for entry in datasets:
        lines.append("[[datasets]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
        lines.append("")
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


CAPTIONS = (
    "a yellow square slides across a striped background",
    "black and white bars above a gradient, a square moving right",
    "a tone rises in steps while a square crosses the frame",
    "a small synthetic clip with a steady hum",
)


def make_dataset(
    root: str | Path,
    num_videos: int = 2,
    num_frames: int = 25,
    size: tuple[int, int] = (128, 96),
    fps: int = 24,
    resolution: tuple[int, int] = (64, 64),
    target_frames: Sequence[int] = (9,),
    frame_extraction: str = "head",
    codec: str = "h264",
    audio: bool = True,
    num_images: int = 0,
    **dataset_keys,
) -> Path:
    """A ready dataset under `root`: `videos/` (captioned clips with aac audio), optionally `images/`,
    a `cache/` per dataset, and `dataset.toml`. Returns the toml's path."""
    root = Path(root)
    videos = root / "videos"
    for i in range(num_videos):
        clip = write_video(videos / f"clip{i:02d}.mp4", num_frames, size, fps, codec, audio=audio,
                           base_hz=330.0 + 55.0 * i)
        write_caption(clip, CAPTIONS[i % len(CAPTIONS)])
    entries = [dict(video_directory=str(videos), cache_directory=str(root / "cache" / "videos"),
                    resolution=list(resolution), target_frames=list(target_frames),
                    frame_extraction=frame_extraction, **dataset_keys)]
    if num_images:
        images = root / "images"
        for i in range(num_images):
            image = write_image(images / f"still{i:02d}.png", size, index=i)
            write_caption(image, f"a still frame number {i}")
        entries.append(dict(image_directory=str(images), cache_directory=str(root / "cache" / "images"),
                            resolution=list(resolution)))
    return write_dataset_toml(root / "dataset.toml", entries)
