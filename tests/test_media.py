"""PyAV decoding on real encoded media: frame windows, buckets, crops, fps, audio windows and resampling."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from ltxv2_diffusers.data import synthetic
from ltxv2_diffusers.data.media import (
    MediaError,
    bucket_resolutions,
    decode_audio_window,
    decode_image,
    decode_video_frames,
    probe_audio,
    probe_video,
    select_bucket,
)

SR = 16000


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return {
        "h264": synthetic.write_video(root / "clip_h264.mp4", 60, (128, 64), 25, "h264",
                                      base_hz=440, step_hz=220, step_s=1.0),
        "mpeg4": synthetic.write_video(root / "clip_mpeg4.mp4", 40, (128, 64), Fraction(30000, 1001), "mpeg4",
                                       audio=False),
        "wav48": synthetic.write_audio(root / "tone48.wav", 2.0, 48000, 1, base_hz=440, step_hz=220),
        "flac44": synthetic.write_audio(root / "tone44.flac", 2.0, 44100, 2, base_hz=440, step_hz=220),
        "wav16": synthetic.write_audio(root / "tone16.wav", 2.0, 16000, 1, base_hz=440, step_hz=220),
        "png": synthetic.write_image(root / "still.png", (128, 64), index=613),
        "jpg": synthetic.write_image(root / "still.jpg", (128, 64), index=301),
        "root": root,
    }


def _indices(video):
    return [synthetic.read_frame_index(frame.numpy()) for frame in video]


def test_probe_reports_size_frames_fps_and_audio(media):
    info = probe_video(str(media["h264"]))
    assert (info.width, info.height, info.num_frames, info.fps) == (128, 64, 60, 25.0)
    assert info.audio is not None and info.audio.sample_rate == 44100 and info.audio.channels == 2
    assert info.audio.duration == pytest.approx(2.4, abs=0.05)
    ntsc = probe_video(str(media["mpeg4"]))
    assert ntsc.num_frames == 40 and ntsc.fps == pytest.approx(30000 / 1001) and ntsc.audio is None


@pytest.mark.parametrize("codec", ["h264", "mpeg4"])
@pytest.mark.parametrize("start", [0, 1, 17, 31])
def test_frame_windows_are_exact(media, codec, start):
    # start 0 decodes in order; later starts seek to a key frame and pick frames by timestamp.
    video = decode_video_frames(str(media[codec]), start, 9, (64, 32))
    assert video.shape == (9, 3, 32, 64) and video.dtype.is_floating_point
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert _indices(video) == list(range(start, start + 9))


def test_frame_stride_and_window_past_end(media):
    assert _indices(decode_video_frames(str(media["h264"]), 3, 5, (64, 32), frame_stride=4)) == [3, 7, 11, 15, 19]
    with pytest.raises(MediaError, match="ended after"):
        decode_video_frames(str(media["h264"]), 55, 9, (64, 32))


def test_buckets_follow_musubi_rule():
    buckets = bucket_resolutions((768, 512))
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in buckets)
    assert all(w * h <= 768 * 512 for w, h in buckets) and (768, 512) in buckets and (512, 768) in buckets
    assert select_bucket((1920, 1080), (768, 512)) == (768, 512)  # buckets off: the resolution as is
    wide = select_bucket((1920, 1080), (768, 512), enable_bucket=True)
    assert abs(wide[0] / wide[1] - 16 / 9) == min(abs(w / h - 16 / 9) for w, h in buckets)
    assert select_bucket((1080, 1920), (768, 512), enable_bucket=True) == wide[::-1]
    assert select_bucket((300, 200), (768, 512), enable_bucket=True, bucket_no_upscale=True) == (288, 192)
    # no_upscale only applies to sources smaller than the area
    assert select_bucket((3000, 2000), (768, 512), enable_bucket=True, bucket_no_upscale=True) == (768, 512)


def test_resize_covers_then_crops_center(tmp_path):
    # Three vertical thirds red | green | blue; a square bucket keeps the middle and cuts the sides evenly.
    pixels = np.zeros((64, 192, 3), np.uint8)
    pixels[:, :64, 0] = pixels[:, 64:128, 1] = pixels[:, 128:, 2] = 255
    path = tmp_path / "thirds.png"
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 192, 64, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    image = decode_image(str(path), (32, 32))  # scaled to 96x32, then 32 columns kept from the center
    assert image.shape == (1, 3, 32, 32)
    rgb = (image[0].permute(1, 2, 0).numpy() + 1) * 127.5
    assert (rgb[:, 2:-2, 1] > 200).all() and (rgb[:, 2:-2, 0] < 50).all() and (rgb[:, 2:-2, 2] < 50).all()
    wide = decode_image(str(path), (96, 32))[0]  # same aspect: all three thirds survive
    assert wide[0, 16, 10] > 0.8 and wide[1, 16, 48] > 0.8 and wide[2, 16, 85] > 0.8


@pytest.mark.parametrize("kind, index", [("png", 613), ("jpg", 301)])
def test_images_are_one_frame(media, kind, index):
    image = decode_image(str(media[kind]), (64, 32))
    assert image.shape == (1, 3, 32, 64)
    assert synthetic.read_frame_index(image[0].numpy()) == index
    assert probe_video(str(media[kind])).num_frames == 1


def _tone_step_position(x: np.ndarray, low: float, high: float) -> int:
    """Sample where the louder of two tones switches from `low` to `high` (10 ms resolution)."""
    win, hop = 320, 40
    t = np.arange(win) / SR
    e_low, e_high = np.exp(-2j * np.pi * low * t), np.exp(-2j * np.pi * high * t)
    for start in range(0, len(x) - win, hop):
        seg = x[start : start + win]
        if abs(seg @ e_high) > abs(seg @ e_low):
            return start + win // 2
    return -1


@pytest.mark.parametrize("name", ["h264", "wav48", "flac44", "wav16"])
def test_audio_window_is_cut_at_the_right_time(media, name):
    # Window 0.8 s .. 1.16 s; the tone steps 440 -> 660 Hz at 1.0 s, i.e. 3200 samples in.
    clip = decode_audio_window(str(media[name]), 0.8, 0.36, SR)
    wave = clip.waveform.numpy()
    assert wave.shape == (2, 5760) and clip.num_valid_samples == 5760 and clip.sample_rate == SR
    assert abs(_tone_step_position(wave[0], 440, 660) - 3200) <= 160  # within 10 ms, even through aac
    spectrum = np.abs(np.fft.rfft(wave[0, 3600:]))
    assert np.fft.rfftfreq(len(wave[0, 3600:]), 1 / SR)[spectrum.argmax()] == pytest.approx(660, abs=15)


def test_mono_is_duplicated_and_resampled_length_is_exact(media):
    clip = decode_audio_window(str(media["wav48"]), 0.0, 1.0, SR)
    wave = clip.waveform.numpy()
    assert wave.shape == (2, SR) and np.array_equal(wave[0], wave[1])
    reference = synthetic.tone(SR, SR, base_hz=440, step_hz=220)  # the same tone generated at 16 kHz
    inner = slice(200, SR - 200)
    assert np.abs(wave[0, inner] - reference[inner]).max() < 0.02  # amplitude 0.5, 16-bit source
    assert probe_audio(str(media["flac44"])).channels == 2


def test_audio_past_the_end_is_zero_padded(media):
    clip = decode_audio_window(str(media["wav16"]), 1.8, 0.5, SR)
    assert clip.waveform.shape == (2, 8000) and clip.num_valid_samples == 3200
    assert clip.waveform[:, 3200:].abs().max() == 0 and clip.waveform[:, :3200].abs().max() > 0.3
    with pytest.raises(MediaError, match="no samples"):
        decode_audio_window(str(media["wav16"]), 5.0, 0.5, SR)
    with pytest.raises(MediaError, match="no audio stream"):
        decode_audio_window(str(media["mpeg4"]), 0.0, 0.5, SR)


def test_unreadable_and_truncated_files_raise_media_error(media, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    truncated = tmp_path / "cut.mp4"  # index at the end: cut off, the file cannot be opened
    truncated.write_bytes(media["h264"].read_bytes()[:3000])
    for path in (junk, truncated):
        with pytest.raises(MediaError) as info:
            probe_video(str(path))
        assert info.value.path == str(path) and "unreadable" in info.value.reason
    # index first (web "faststart" mp4): it opens, but fewer frames are there than the index lists
    whole = synthetic.write_video(tmp_path / "fast.mp4", 48, (128, 64), 24, faststart=True)
    assert probe_video(str(whole)).num_frames == 48
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(MediaError, match="truncated: the index lists 48 frames"):
        probe_video(str(cut))


@pytest.mark.parametrize("ext, codec", [(".mkv", "h264"), (".mov", "h264"), (".avi", "mpeg4")])
def test_other_containers(tmp_path, ext, codec):
    path = synthetic.write_video(tmp_path / f"c{ext}", 30, (128, 64), 24, codec, audio=False)
    assert probe_video(str(path)).num_frames == 30
    assert _indices(decode_video_frames(str(path), 20, 9, (64, 32))) == list(range(20, 29))


def test_variable_frame_rate_counts_frames_in_order(tmp_path):
    # Frame gaps of 30 or 60 ms: timestamps do not fit one rate, so indices fall back to decode order.
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        pts = 0
        for index in range(40):
            frame = av.VideoFrame.from_ndarray(synthetic.frame_pixels(index, 128, 64), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 30 if index % 3 else 60
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert probe_video(str(path)).num_frames == 40
    assert _indices(decode_video_frames(str(path), 20, 9, (64, 32))) == list(range(20, 29))
