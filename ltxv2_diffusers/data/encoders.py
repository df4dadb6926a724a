"""Item encoders of the caching jobs: media -> video latents, audio latents, text embeddings.

Each encoder loads only the model it needs, decodes media on CPU threads ahead of the GPU, and
names itself with a fingerprint of what changes its output (model file, dtype, tiling, code
version), which `data/jobs.py` stores with every cached row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import torch

from ltxv2_diffusers.models.loading import load_required_components
from ltxv2_diffusers.text import get_text_backend
from ltxv2_diffusers.text.base import folder_identity, resolve_dtype

from .items import Item, load_audio, load_video_frames
from .media import MediaError
from .mel import log_mel
from .stores import tensor_to_columns

logger = logging.getLogger(__name__)

# Bump when a job's output for the same inputs changes; old cache rows are then recomputed.
CODE_VERSIONS = {"video": "1", "audio": "1", "text": "1", "sample_prompts": "1", "reference": "1",
                 "reference_audio": "1"}

# --------------------------------------------------------------------------------------------------
# helpers


def file_stamp(path: str | None) -> str:
    """Size and mtime of a file or (recursively) a folder: changes when its content is replaced."""
    if not path:
        return "-"
    if os.path.isfile(path):
        st = os.stat(path)
        return f"{st.st_size}:{int(st.st_mtime)}"
    if os.path.isdir(path):
        return folder_identity(path)
    return path  # a Hub id


def content_hash(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def resolve_device(device: str | None, rank: int | None) -> torch.device:
    """`cuda` + a worker rank -> that rank's GPU; `None` -> cuda when available, else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and rank is not None and torch.cuda.device_count() > 1:
        dev = torch.device("cuda", rank % torch.cuda.device_count())
    return dev


_TILING_STATE = ("use_tiling", "use_framewise_decoding", "tile_sample_min_height", "tile_sample_min_width",
                 "tile_sample_min_num_frames", "tile_sample_stride_height", "tile_sample_stride_width",
                 "tile_sample_stride_num_frames")


@contextlib.contextmanager
def _tiled(vae) -> Iterator[None]:
    """The video VAE encoding with diffusers' default tiles (512x512 pixels, 16-frame chunks) for the
    duration, its own tiling settings restored afterwards."""
    saved = {name: getattr(vae, name) for name in _TILING_STATE if hasattr(vae, name)}
    try:
        vae.enable_tiling()
        vae.use_framewise_decoding = True  # diffusers gates temporal tiling of encode on this flag
        vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames = 16, 8
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


def _announce(what: str, rank: int | None, device: torch.device) -> None:
    if rank is not None or device.type != "cpu":
        import sys

        print(f"map worker {rank if rank is not None else 0}: {what} on {device}", file=sys.stderr)


def item_to_row(item) -> dict[str, Any]:
    row = dataclasses.asdict(item)
    row["bucket"] = list(row["bucket"]) if row.get("bucket") is not None else None
    return row


def row_to_item(row: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(Item)}
    kwargs = {k: v for k, v in row.items() if k in names}
    if kwargs.get("bucket") is not None:
        kwargs["bucket"] = tuple(kwargs["bucket"])
    return Item(**kwargs)


def item_media(item) -> str:
    return getattr(item, "video_path", None) or getattr(item, "image_path", None) or "?"


def failure_reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason) if reason else f"{type(error).__name__}: {error}"


def prefetched(fn, items: list, workers: int) -> Iterator[tuple[Any, Any]]:
    """`(item, fn(item) or the exception it raised)` in order, with at most `workers` items being
    prepared ahead on CPU threads (PyAV and swscale release the GIL), so decoding overlaps encoding
    without holding more than `workers` decoded clips in memory."""
    from collections import deque

    with ThreadPoolExecutor(max(1, workers)) as pool:
        queue: deque = deque()
        it = iter(items)
        for item in it:
            queue.append((item, pool.submit(fn, item)))
            if len(queue) >= workers:
                break
        while queue:
            item, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(fn, nxt)))
            try:
                yield item, fut.result()
            except Exception as e:  # reported per item by the caller
                yield item, e


class _DecodeSet(torch.utils.data.Dataset):
    """Items decoded in DataLoader worker processes; failures come back as `(None, reason)` so one bad
    file never stops the loader."""

    def __init__(self, items: list, fn):
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        try:
            return i, self.fn(self.items[i]), None
        except Exception as e:
            return i, None, failure_reason(e)


def prefetched_in_processes(fn, items: list, workers: int) -> Iterator[tuple[Any, Any]]:
    """Like `prefetched`, with worker processes (one GIL and one torch thread each) handing tensors
    over through shared memory; worth it when decoding is the bottleneck on a many-core host."""
    loader = torch.utils.data.DataLoader(_DecodeSet(items, fn), batch_size=None, shuffle=False,
                                         num_workers=max(1, min(workers, len(items))), prefetch_factor=2)
    for i, value, error in loader:
        yield items[i], (ValueError(error) if error is not None else value)


# --------------------------------------------------------------------------------------------------
# encoders: picklable specs that load their model lazily in each worker


class ItemEncoder:
    """Base of the per-kind encoders. Subclasses set `kind` and implement `fingerprint`,
    `item_signature` and `encode_items`; models load on first use, in the worker that uses them."""

    kind = ""

    def __getstate__(self):
        # Workers get the spec, never a loaded model.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_m_")}

    def fingerprint(self) -> str:
        raise NotImplementedError

    def item_signature(self, item) -> Any:
        raise NotImplementedError

    def item_fingerprint(self, item, job_fingerprint: str | None = None) -> str:
        return content_hash(job_fingerprint or self.fingerprint(), self.item_signature(item))

    def encode_items(self, items: list, rank: int | None) -> Iterator[tuple[Any, dict | BaseException]]:
        raise NotImplementedError

    def free(self) -> None:
        for k in [k for k in self.__dict__ if k.startswith("_m_")]:
            delattr(self, k)


class VideoLatentEncoder(ItemEncoder):
    """Frames -> un-normalized video VAE means `[128,F,H,W]` (`latent_dist.mean`)."""

    kind = "video"

    def __init__(self, vae: str, device: str | None = None, dtype: str | torch.dtype = "bf16",
                 tiling: bool = False, chunk_size: int | None = None, decode_workers: int = 4, vae_module=None,
                 tile_size: int | None = None, decode_processes: bool = False):
        if chunk_size is not None and (chunk_size < 16 or chunk_size % 8):
            raise ValueError(f"--vae_chunk_size {chunk_size}: use a multiple of 8 frames, at least 16.")
        self.vae = vae
        self.device = device
        self.dtype = resolve_dtype(dtype)
        if tile_size is not None and (tile_size < 64 or tile_size % 32):
            raise ValueError(f"VAE tile size {tile_size}: use a multiple of 32 pixels, at least 64.")
        self.tiling = bool(tiling) or tile_size is not None
        self.tile_size = tile_size
        self.chunk_size = chunk_size
        self.decode_workers = max(1, int(decode_workers))
        self.decode_processes = bool(decode_processes)
        if vae_module is not None:
            self._m_vae = vae_module

    def fingerprint(self) -> str:
        return content_hash(self.kind, CODE_VERSIONS[self.kind], str(self.vae), file_stamp(self.vae), str(self.dtype),
                     self.tiling, self.tile_size, self.chunk_size)

    def item_signature(self, item) -> Any:
        return (item_media(item), file_stamp(item_media(item)), item.frame_start, item.num_frames,
                item.frame_stride, list(item.bucket))

    def _model(self, rank):
        if not hasattr(self, "_m_vae"):
            self._m_vae = load_required_components(self.vae, ["vae"])["vae"]
        vae = self._m_vae
        dev = resolve_device(self.device, rank)
        if vae.device != dev or vae.dtype != self.dtype:
            vae = self._m_vae = vae.to(dev, self.dtype).eval()
            _announce("video VAE", rank, dev)
        if self.tiling:
            t = self.tile_size
            stride = max(32, t - 64) if t else None  # diffusers default: 512 tiles, 448 stride
            vae.enable_tiling(t, t, None, stride, stride)
        if self.chunk_size:
            # diffusers gates temporal tiling of encode on this flag (shared with decode).
            vae.use_framewise_decoding = True
            vae.tile_sample_min_num_frames = self.chunk_size
            vae.tile_sample_stride_num_frames = max(8, self.chunk_size - 8)
        return vae

    def _out_of_memory_reason(self, frames: torch.Tensor) -> str:
        """What to do when a clip's encode does not fit the GPU even in tiles: smaller tiles or buckets."""
        size = f"{frames.shape[0]} frames of {frames.shape[3]}x{frames.shape[2]}"
        return (f"the GPU ran out of memory encoding {size}, also in tiles; use smaller tiles "
                "(--vae_spatial_tile_sample_min_size 256, --vae_chunk_size 16) or smaller buckets")

    def _encode_fitting(self, frames: torch.Tensor, rank: int | None, media: str) -> torch.Tensor | None:
        """Encode a clip, in tiles when it does not fit the GPU untiled (None when it fits neither way).
        Without --vae_tiling a clip that runs out of memory is encoded again with diffusers' tiling
        (512-pixel tiles, 16-frame chunks), and so is every later clip at least as large, in this worker:
        one long clip on a small card costs a slower encode, not the item."""
        limit = getattr(self, "_m_untiled_limit", None)
        if self.tiling or limit is None or frames.numel() < limit:
            latents = self._encode_or_none(frames, rank)
            if latents is not None or self.tiling:
                return latents
            self._m_untiled_limit = frames.numel()  # smaller than any limit so far: it was tried untiled
            logger.warning("%s: %d frames of %dx%d did not fit the GPU untiled; encoding clips this large in "
                           "tiles (pass --vae_tiling to tile every clip)", media, frames.shape[0], frames.shape[3],
                           frames.shape[2])
        with _tiled(self._model(rank)):
            return self._encode_or_none(frames, rank)

    def _encode_or_none(self, frames: torch.Tensor, rank: int | None) -> torch.Tensor | None:
        """The clip's latents, or None when the GPU ran out of memory (its cache then emptied for the next)."""
        try:
            return self.encode_frames(frames, rank)
        except torch.OutOfMemoryError:
            pass  # released below, once the failed encode's tensors are gone with the exception
        torch.cuda.empty_cache()  # the next (maybe smaller) encode gets the memory back; a no-op without CUDA
        return None

    @staticmethod
    def decode(item) -> torch.Tensor:
        frames = load_video_frames(item)
        if frames.dtype == torch.uint8:
            frames = frames.float() / 127.5 - 1.0
        return frames

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, rank: int | None = None) -> torch.Tensor:
        """`[F,3,H,W]` in [-1,1] -> `[128,F',H',W']` latent means in the encoder's dtype."""
        vae = self._model(rank)
        # Move the contiguous float frames first, then cast and permute on the device (a CPU-side
        # permute or cast of a 121-frame clip costs more than the transfer).
        x = frames.to(vae.device).to(self.dtype).permute(1, 0, 2, 3).unsqueeze(0)
        return vae.encode(x).latent_dist.mean[0]

    def encode_items(self, items, rank):
        self._model(rank)
        ahead = prefetched_in_processes if self.decode_processes else prefetched
        for item, frames in ahead(self.decode, items, self.decode_workers):
            try:
                if isinstance(frames, BaseException):
                    raise frames
                latents = self._encode_fitting(frames, rank, item_media(item))
            except Exception as e:  # one bad item must not stop the job
                yield item, e
                continue
            if latents is None:
                yield item, MediaError(item_media(item), self._out_of_memory_reason(frames))
                continue
            latents = latents.cpu()
            yield item, {
                **tensor_to_columns("latents", latents),
                "fps": float(item.fps or 24.0), "width": int(item.bucket[0]), "height": int(item.bucket[1]),
                "num_frames": int(frames.shape[0]), "source": item_media(item),
            }


class AudioLatentEncoder(ItemEncoder):
    """Audio window -> log-mel `[2,T,64]` -> un-normalized audio VAE means `[8,Fa,16]` + valid length."""

    kind = "audio"

    def __init__(self, vae: str, device: str | None = None, dtype: str | torch.dtype = "fp32",
                 decode_workers: int = 4, audio_vae_module=None):
        self.vae = vae
        self.device = device
        self.dtype = resolve_dtype(dtype)
        self.decode_workers = max(1, int(decode_workers))
        if audio_vae_module is not None:
            self._m_vae = audio_vae_module

    def fingerprint(self) -> str:
        return content_hash(self.kind, CODE_VERSIONS[self.kind], str(self.vae), file_stamp(self.vae), str(self.dtype))

    def item_signature(self, item) -> Any:
        audio = getattr(item, "audio_path", None) or item_media(item)
        return (item_media(item), audio, file_stamp(audio), item.frame_start, item.num_frames,
                item.frame_stride, item.fps)

    def _model(self, rank):
        if not hasattr(self, "_m_vae"):
            self._m_vae = load_required_components(self.vae, ["audio_vae"])["audio_vae"]
        dev = resolve_device(self.device, rank)
        if self._m_vae.device != dev or self._m_vae.dtype != self.dtype:
            self._m_vae = self._m_vae.to(dev, self.dtype).eval()
            _announce("audio VAE", rank, dev)
        return self._m_vae

    def load_clip(self, item, sample_rate: int):
        """The audio this encoder encodes for `item`: its frames' time window."""
        return load_audio(item, sample_rate=sample_rate)

    def mel(self, item) -> tuple[torch.Tensor, int]:
        """`(log-mel [2,T,64], valid mel frames)` for the item's time window."""
        cfg = self._m_vae.config
        rate = int(getattr(cfg, "sample_rate", 16000))
        hop = int(getattr(cfg, "mel_hop_length", 160))
        clip = self.load_clip(item, rate)
        wave, valid = clip.waveform, clip.num_valid_samples
        if valid <= 0 or wave.shape[-1] == 0:
            raise ValueError("audio of zero length in the item's time window")
        mel = log_mel(wave, sample_rate=rate, hop_length=hop)
        frames = min(mel.shape[-2], valid // hop + 1)
        return mel, frames

    @torch.no_grad()
    def encode_items(self, items, rank):
        vae = self._model(rank)
        for item, result in prefetched(self.mel, items, self.decode_workers):
            try:
                if isinstance(result, BaseException):
                    raise result
                mel, valid_mel = result
                lat = vae.encode(mel.unsqueeze(0).to(vae.device, self.dtype)).latent_dist.mean[0].cpu()
            except Exception as e:
                yield item, e
                continue
            # The audio VAE downsamples time by 4: a latent frame is valid when it saw real audio.
            total_mel = mel.shape[-2]
            valid = lat.shape[-2] if valid_mel >= total_mel else min(lat.shape[-2], -(-valid_mel // 4))
            yield item, {
                **tensor_to_columns("audio_latents", lat), "audio_lengths": int(valid),
                "sample_rate": int(getattr(vae.config, "sample_rate", 16000)),
                "width": int(item.bucket[0]), "height": int(item.bucket[1]),
                "source": getattr(item, "audio_path", None) or item_media(item),
            }


class TextEmbeddingEncoder(ItemEncoder):
    """Captions -> text context through a registered text backend (`gemma`, `t5`, plugins)."""

    kind = "text"

    def __init__(self, backend: str, text_encoder: str, tokenizer: str | None = None, max_length: int | None = None,
                 connectors: str | None = None, audio_video: bool = False, device: str | None = None,
                 dtype: str | torch.dtype | None = None, backend_instance=None):
        self.backend = backend
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.connectors = connectors
        self.audio_video = bool(audio_video)
        self.device = device
        self.dtype = dtype
        if backend_instance is not None:
            self._m_backend = backend_instance

    def fingerprint(self) -> str:
        if hasattr(self, "_m_backend"):
            return content_hash("text", CODE_VERSIONS["text"], self._m_backend.identity())
        # Cheap identity from the spec, so a finished cache is recognised without loading a 12 B model.
        return content_hash("text", CODE_VERSIONS["text"], self.backend, self.text_encoder, file_stamp(self.text_encoder),
                     self.tokenizer, file_stamp(self.tokenizer), self.max_length,
                     self.connectors if not isinstance(self.connectors, str) else [self.connectors, file_stamp(self.connectors)],
                     self.audio_video, str(self.dtype))

    def item_signature(self, item) -> Any:
        return item.caption

    def load_backend(self, rank: int | None = None):
        if not hasattr(self, "_m_backend"):
            kwargs = dict(text_encoder=self.text_encoder, tokenizer=self.tokenizer, connectors=self.connectors,
                          audio_video=self.audio_video, device=resolve_device(self.device, rank), dtype=self.dtype)
            if self.max_length is not None:
                kwargs["max_length"] = self.max_length
            self._m_backend = get_text_backend(self.backend)(**kwargs)
        return self._m_backend

    def encode_prompts(self, prompts: list[str], rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        text, mask = self.load_backend(rank).encode(list(prompts))
        return text.cpu(), mask.cpu()

    def encode_items(self, items, rank):
        good, bad = [], []
        for it in items:
            if not isinstance(it.caption, str) or not it.caption.strip():
                bad.append(it)
            else:
                good.append(it)
        for it in bad:
            yield it, ValueError("empty caption")
        if not good:
            return
        try:
            text, mask = self.encode_prompts([it.caption for it in good], rank)
        except torch.OutOfMemoryError:
            error = ValueError(f"the GPU ran out of memory encoding {len(good)} captions at once; pass a smaller "
                               "--batch_size")
        except Exception as e:
            error = e
        else:
            error = None
        if error is not None:
            torch.cuda.empty_cache()
            for it in good:
                yield it, error
            return
        for i, it in enumerate(good):
            yield it, {**tensor_to_columns("text", text[i]), **tensor_to_columns("text_mask", mask[i]),
                       "caption": it.caption}

    def free(self) -> None:
        if hasattr(self, "_m_backend"):
            self._m_backend.free()
        super().free()
