"""Media decoding through PyAV: probing, frame windows, bucket resize + center crop, audio windows.

Everything FFmpeg reads works (any container/codec for video, png/jpg/webp/... for images,
wav/flac/mp3/m4a/ogg or a video's own stream for audio). Frames come out as float `[F,3,H,W]` in
[-1, 1] at the bucket size; audio as float `[2,S]` at the requested rate (mono duplicated).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import av
import numpy as np
import torch

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")
DEFAULT_FPS = 24.0
BUCKET_STEP = 32
# Extra audio decoded on each side of a window so the resampler's filter edges fall outside it.
_AUDIO_MARGIN_S = 0.1


class MediaError(ValueError):
    """A media file that cannot be used; `reason` is short and user-facing."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What probing found about an audio stream (in a video or an audio file)."""

    sample_rate: int
    channels: int
    duration: float  # seconds of decodable audio according to the packets
    start_time: float  # seconds, on the container's timeline


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What probing found about a video or image file."""

    width: int
    height: int
    num_frames: int
    fps: float
    start_time: float  # first frame's time in seconds, on the container's timeline
    audio: AudioInfo | None


# ---------------------------------------------------------------- probing


def probe_video(path: str) -> VideoInfo:
    """Open a video (or image) file, count its frames by demuxing, and look at its audio stream.

    Raises `MediaError` for a file FFmpeg cannot open, without a video stream, or with no frames.
    """
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            fps = _stream_fps(stream)
            video_tb = _rational(stream.time_base)  # streams are unreadable once the container closes
            audio_stream = container.streams.audio[0] if container.streams.audio else None
            streams = [stream] + ([audio_stream] if audio_stream is not None else [])
            num_frames, first_pts = 0, None
            audio_packets, audio_ticks, audio_first, audio_end = 0, 0, None, None
            for packet in container.demux(streams):
                if packet.size == 0:
                    continue  # flush packets carry no data
                if packet.stream is stream:
                    num_frames += 1
                    if packet.pts is not None and (first_pts is None or packet.pts < first_pts):
                        first_pts = packet.pts
                else:
                    audio_packets += 1
                    audio_ticks += packet.duration or 0
                    if packet.pts is not None:
                        audio_first = packet.pts if audio_first is None else min(audio_first, packet.pts)
                        end = packet.pts + (packet.duration or 0)
                        audio_end = end if audio_end is None else max(audio_end, end)
            # Decoding one frame proves the codec works and that width/height are real.
            container.seek(0)
            frame = next(container.decode(stream), None)
            if frame is None:
                raise MediaError(path, "no decodable video frame")
            width, height = frame.width, frame.height
            declared = stream.frames  # from the container index (0 when the container has none)
            audio = None
            if audio_stream is not None and audio_stream.codec_context.sample_rate:
                tb = _rational(audio_stream.time_base) or Fraction(0)
                if not audio_ticks and audio_packets and audio_end is not None:
                    audio_ticks = audio_end - audio_first  # demuxers that leave packet durations empty
                audio = AudioInfo(
                    sample_rate=audio_stream.codec_context.sample_rate,
                    channels=audio_stream.codec_context.channels,
                    duration=float(audio_ticks * tb),
                    start_time=float((audio_first or 0) * tb),
                )
    except MediaError:
        raise
    except (av.FFmpegError, OSError, StopIteration, ValueError) as error:
        raise MediaError(path, f"unreadable or truncated ({_short(error)})") from None
    if num_frames == 0:
        raise MediaError(path, "no video frames")
    if declared and num_frames < declared:
        raise MediaError(path, f"truncated: the index lists {declared} frames but only {num_frames} are in the file")
    start = float(first_pts * video_tb) if first_pts is not None and video_tb else 0.0
    return VideoInfo(width=width, height=height, num_frames=num_frames, fps=fps, start_time=start, audio=audio)


def probe_audio(path: str) -> AudioInfo:
    """Open an audio file and measure its first audio stream by demuxing; `MediaError` if unusable."""
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError(path, "no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            samples, first = 0, None
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                samples += packet.duration or 0
                if packet.pts is not None and (first is None or packet.pts < first):
                    first = packet.pts
            tb = _rational(stream.time_base)
            duration = float(samples * tb) if tb else 0.0
            if duration == 0.0 and samples == 0:
                # Some demuxers leave packet durations empty: decode to measure.
                container.seek(0)
                duration = sum(f.samples for f in container.decode(stream)) / rate if rate else 0.0
            return AudioInfo(
                sample_rate=rate,
                channels=stream.codec_context.channels,
                duration=duration,
                start_time=float((first or 0) * tb) if tb else 0.0,
            )
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise MediaError(path, f"unreadable or truncated audio ({_short(error)})") from None


def _rational(value) -> Fraction | None:
    """A PyAV rational (`Fraction` before PyAV 19, `av.AVRational` since) as a `Fraction`; None when
    unset (None, or a zero denominator/numerator)."""
    if value is None:
        return None
    num, den = int(value.numerator), int(value.denominator)
    return Fraction(num, den) if den and num else None


def _stream_fps(stream) -> float:
    rate = _rational(stream.average_rate) or _rational(stream.guessed_rate) or _rational(stream.base_rate)
    if not rate or rate <= 0:
        return DEFAULT_FPS
    return float(rate)


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if len(text) < 160 else text[:157] + "..."


# ---------------------------------------------------------------- buckets


def select_bucket(
    source_size: tuple[int, int],
    resolution: tuple[int, int],
    enable_bucket: bool = False,
    bucket_no_upscale: bool = False,
    step: int = BUCKET_STEP,
) -> tuple[int, int]:
    """Choose the `(W, H)` a source of `source_size` is resized and center-cropped to.

    Without buckets: `resolution`. With buckets (musubi's rule, in steps of 32): among sizes of about
    the configured area, the one whose aspect ratio is nearest the source's; with `bucket_no_upscale`
    a source smaller than that area keeps its own size, rounded down to the step.
    """
    if not enable_bucket:
        return tuple(resolution)
    area = resolution[0] * resolution[1]
    width, height = source_size
    if bucket_no_upscale and width * height <= area:
        return (width // step * step, height // step * step)
    buckets = bucket_resolutions(resolution, step)
    aspect = width / height
    return min(buckets, key=lambda b: (abs(b[0] / b[1] - aspect), b))


def bucket_resolutions(resolution: tuple[int, int], step: int = BUCKET_STEP) -> list[tuple[int, int]]:
    """All bucket sizes for a configured resolution: widths from half the square side up, heights
    filling the area, both orientations, multiples of `step`."""
    area = resolution[0] * resolution[1]
    side = int(math.sqrt(area))
    buckets = set()
    for w in range(max(step, (side // 2) // step * step), side + step, step):
        h = (area // w) // step * step
        if h >= step:
            buckets.add((w, h))
            buckets.add((h, w))
    return sorted(buckets)


# ---------------------------------------------------------------- frames


def decode_video_frames(
    path: str,
    frame_start: int,
    num_frames: int,
    bucket: tuple[int, int],
    frame_stride: int = 1,
) -> torch.Tensor:
    """Decode frames `frame_start + i*frame_stride` (i < num_frames) of a video or image, resized to
    cover `bucket` and center-cropped to it. Returns float32 `[F,3,H,W]` in [-1, 1].

    Frame indices count from the first frame in presentation order. A window that starts late is
    reached by seeking to the key frame before it; frames are identified by their timestamps at the
    stream's average rate, and when those do not fit a constant rate the clip is decoded from the
    start instead, so indices always match the frame count that probing reported.
    """
    wanted = [frame_start + i * frame_stride for i in range(num_frames)]
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = None
            if frame_start > 0:  # None when the stream's timestamps are unusable
                frames = _frames_by_timestamp(container, stream, wanted)
            if frames is None:
                container.seek(0)
                frames = _frames_in_order(container, stream, wanted)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise MediaError(path, f"decoding failed ({_short(error)})") from None
    if len(frames) < num_frames:
        raise MediaError(
            path, f"video ended after {len(frames)} of {num_frames} frames from frame {frame_start} (truncated?)"
        )
    pixels = torch.from_numpy(np.stack([_resize_crop(frame, bucket) for frame in frames]))  # [F,H,W,3] uint8
    # One converting copy into a contiguous [F,3,H,W] buffer (what the VAE's convolutions want), then in place.
    video = torch.empty((pixels.shape[0], 3, pixels.shape[1], pixels.shape[2]), dtype=torch.float32)
    video.copy_(pixels.permute(0, 3, 1, 2))
    return video.div_(127.5).sub_(1.0)


def decode_image(path: str, bucket: tuple[int, int]) -> torch.Tensor:
    """Decode a still image to float32 `[1,3,H,W]` in [-1, 1] at the bucket size."""
    return decode_video_frames(path, 0, 1, bucket)


def _frames_in_order(container, stream, wanted: list[int]) -> list:
    wanted_set, last = set(wanted), wanted[-1]
    frames = []
    # FFmpeg's decoders hand frames out in presentation order, so the n-th frame is frame n.
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted_set:
            frames.append(frame)
        if index >= last:
            break
    return frames


def _frames_by_timestamp(container, stream, wanted: list[int]) -> list | None:
    """Seek near the first wanted frame and pick frames by timestamp; None if timestamps are unusable."""
    fps, tb = _rational(stream.average_rate), _rational(stream.time_base)
    if not fps or not tb:
        return None
    start_pts = stream.start_time if stream.start_time is not None else 0

    def index_of(frame) -> int | None:
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is None:
            return None
        return round((pts - start_pts) * tb * fps)

    target = start_pts + int(Fraction(wanted[0]) / fps / tb)
    container.seek(max(start_pts, target), stream=stream, backward=True, any_frame=False)
    wanted_set, last = set(wanted), wanted[-1]
    frames, previous = [], None
    for frame in container.decode(stream):
        index = index_of(frame)
        if index is None:
            return None
        if previous is None and index > wanted[0]:
            return None  # the seek overshot
        if previous is not None and index != previous + 1:
            return None  # not a constant rate: indices would not match the probed count
        previous = index
        if index in wanted_set:
            frames.append(frame)
        if index >= last:
            break
    return frames if len(frames) == len(wanted) else None


def _resize_crop(frame: av.VideoFrame, bucket: tuple[int, int]) -> np.ndarray:
    """Scale so the frame covers the bucket (aspect kept), then crop the center. Returns `[H,W,3]` uint8."""
    out_w, out_h = bucket
    scale = max(out_w / frame.width, out_h / frame.height)
    new_w = max(out_w, round(frame.width * scale))
    new_h = max(out_h, round(frame.height * scale))
    # AREA averages when shrinking (no aliasing); bicubic is the better choice when enlarging.
    interpolation = "AREA" if scale < 1 else "BICUBIC"
    rgb = frame.reformat(width=new_w, height=new_h, format="rgb24", interpolation=interpolation).to_ndarray()
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return np.ascontiguousarray(rgb[top : top + out_h, left : left + out_w])


# ---------------------------------------------------------------- audio


@dataclasses.dataclass
class AudioClip:
    """A stereo waveform cut to a time window; samples past the end of the source are zeros."""

    waveform: torch.Tensor  # float32 [2, S]
    sample_rate: int
    num_valid_samples: int  # samples that came from the source (the rest is zero padding)


def decode_audio_window(path: str, start_time: float, duration: float, sample_rate: int = 16000) -> AudioClip:
    """Decode the first audio stream of `path` for `[start_time, start_time + duration)` seconds (on the
    file's timeline), resample to `sample_rate` with FFmpeg's resampler, and return stereo.

    The result has exactly `round(duration * sample_rate)` samples; a window reaching past the end of
    the audio is zero-padded and `num_valid_samples` says how much is real. Mono is duplicated to
    both channels; more than two channels are downmixed by FFmpeg.
    """
    length = round(duration * sample_rate)
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MediaError(path, "no audio stream")
            stream = container.streams.audio[0]
            native, native_rate, buffer_start = _decode_native(container, stream, start_time - _AUDIO_MARGIN_S,
                                                                start_time + duration + _AUDIO_MARGIN_S)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise MediaError(path, f"audio decoding failed ({_short(error)})") from None
    if native.shape[1] == 0:
        raise MediaError(path, "audio has no samples in the frames' time window")
    stereo = _to_stereo(native)
    if native_rate != sample_rate:
        stereo = _resample(stereo, native_rate, sample_rate)
    offset = round((start_time - buffer_start) * sample_rate)
    out = np.zeros((2, length), dtype=np.float32)
    src_lo, src_hi = max(0, offset), min(stereo.shape[1], offset + length)
    if src_hi > src_lo:
        out[:, src_lo - offset : src_hi - offset] = stereo[:, src_lo:src_hi]
    valid = max(0, src_hi - src_lo)
    if valid == 0:
        raise MediaError(path, "audio has no samples in the frames' time window")
    return AudioClip(waveform=torch.from_numpy(out), sample_rate=sample_rate, num_valid_samples=valid)


def _decode_native(container, stream, t_from: float, t_to: float) -> tuple[np.ndarray, int, float]:
    """Decode `[t_from, t_to)` at the native rate as float32 `[C, N]`; returns (samples, rate, start time)."""
    tb = _rational(stream.time_base)
    if t_from > 0 and tb:
        container.seek(int(t_from / tb), stream=stream, backward=True, any_frame=False)
    chunks, buffer_start, rate, expected = [], None, stream.codec_context.sample_rate, None
    for frame in container.decode(stream):
        rate = frame.sample_rate
        data = frame.to_ndarray()
        data = _planar_float(data, frame.format.name, len(frame.layout.channels))
        frame_tb = _rational(frame.time_base)
        t = float(frame.pts * frame_tb) if frame.pts is not None and frame_tb else None
        if buffer_start is None:
            buffer_start = t if t is not None else 0.0
            expected = 0
        elif t is not None:
            # Place each frame by its own timestamp: gaps become silence, overlaps are trimmed.
            position = round((t - buffer_start) * rate)
            if position > expected:
                chunks.append(np.zeros((data.shape[0], position - expected), dtype=np.float32))
                expected = position
            elif position < expected:
                data = data[:, expected - position :]
        if data.shape[1]:
            chunks.append(data)
            expected += data.shape[1]
        if buffer_start + expected / rate >= t_to:
            break
    if not chunks:
        return np.zeros((max(1, stream.codec_context.channels), 0), dtype=np.float32), rate or 16000, 0.0
    return np.concatenate(chunks, axis=1), rate, buffer_start


def _planar_float(data: np.ndarray, fmt: str, channels: int) -> np.ndarray:
    """PyAV gives planar formats as `[C, N]` and packed ones as `[1, N*C]`; return float32 `[C, N]`."""
    if not fmt.endswith("p"):
        data = data.reshape(-1, channels).T
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    scale = float(np.iinfo(data.dtype).max) + 1.0
    if data.dtype.kind == "u":  # u8 is offset binary
        return (data.astype(np.float32) - scale / 2) / (scale / 2)
    return data.astype(np.float32) / scale


def _to_stereo(samples: np.ndarray) -> np.ndarray:
    if samples.shape[0] == 1:
        return np.repeat(samples, 2, axis=0)
    if samples.shape[0] == 2:
        return samples
    return _downmix(samples)


def _downmix(samples: np.ndarray) -> np.ndarray:
    """More than two channels: let FFmpeg's resampler apply the standard downmix matrix."""
    layout = {3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}.get(samples.shape[0])
    if layout is None:
        return samples[:2]
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
    frame.sample_rate = 48000
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=48000)
    out = [f.to_ndarray() for f in resampler.resample(frame)] + [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(out, axis=1) if out else np.zeros((2, 0), np.float32)


def _resample(stereo: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample `[2, N]` with FFmpeg's swresample; output sample 0 is aligned with input sample 0."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo, dtype=np.float32), format="fltp", layout="stereo")
    frame.sample_rate = rate_in
    frame.pts = 0
    frame.time_base = Fraction(1, rate_in)
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate_out)
    out = [f.to_ndarray() for f in resampler.resample(frame)]
    out += [f.to_ndarray() for f in resampler.resample(None)]
    result = np.concatenate(out, axis=1) if out else np.zeros((2, 0), np.float32)
    expected = round(stereo.shape[1] * rate_out / rate_in)
    return result[:, :expected]
