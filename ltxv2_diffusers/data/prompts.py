"""The `--sample_prompts` file format: one prompt per line with musubi-style overrides.

Both the text-cache job (which embeds every prompt and negative prompt ahead of training) and the
trainer's previews read prompts through this one parser, so what is cached is what is looked up.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass
class PreviewPrompt:
    """One line of `--sample_prompts`: the prompt and its per-line overrides."""

    prompt: str
    width: int = 256
    height: int = 256
    num_frames: int = 25
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    negative_prompt: str = ""
    frame_rate: float = 24.0
    index: int = 0
    image: str | None = None  # `--i`: first-frame image (image-to-video)
    reference: str | None = None  # `--v`: IC-LoRA reference, an image or a video


_OVERRIDES = {
    "w": ("width", int), "width": ("width", int),
    "h": ("height", int), "height": ("height", int),
    "f": ("num_frames", int), "frames": ("num_frames", int),
    "s": ("steps", int), "steps": ("steps", int),
    "g": ("guidance_scale", float), "guidance": ("guidance_scale", float),
    "d": ("seed", int), "seed": ("seed", int),
    "n": ("negative_prompt", str), "negative": ("negative_prompt", str),
    "fps": ("frame_rate", float), "r": ("frame_rate", float),
    "i": ("image", str), "v": ("reference", str),
}


def parse_prompt_line(line: str, index: int = 0, source: str = "--sample_prompts") -> PreviewPrompt | None:
    """Parse `a cat --w 512 --h 320 --f 25 --s 20 --g 3 --d 42 --n blurry` (musubi style).

    Blank lines and `#` comments give None; a bad override is an error naming the line.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split(" --")
    prompt = PreviewPrompt(prompt=parts[0].strip(), index=index)
    for part in parts[1:]:
        key, _, value = part.strip().partition(" ")
        key = key.lower()  # musubi reads --W and --w alike
        if key not in _OVERRIDES:
            raise ValueError(f"{source} line {index + 1}: unknown override --{key}; use "
                             "--w --h --f --s --g --d --n --fps --i --v")
        field, kind = _OVERRIDES[key]
        try:
            setattr(prompt, field, kind(value.strip()))
        except ValueError:
            raise ValueError(f"{source} line {index + 1}: --{key} {value.strip()!r} is not a {kind.__name__}") from None
    if prompt.width % 32 or prompt.height % 32:
        raise ValueError(f"{source} line {index + 1}: size {prompt.width}x{prompt.height} must be multiples of 32")
    if (prompt.num_frames - 1) % 8:
        raise ValueError(f"{source} line {index + 1}: --f {prompt.num_frames} must be 8k+1 (1, 9, 17, 25, ...)")
    if not prompt.prompt:
        raise ValueError(f"{source} line {index + 1}: empty prompt")
    return prompt


def load_prompts(path: str | Path) -> list[PreviewPrompt]:
    """All prompts of a `--sample_prompts` file (at least one)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = []
    for i, line in enumerate(lines):
        parsed = parse_prompt_line(line, index=len(prompts), source=f"--sample_prompts {path}")
        if parsed is not None:
            for field in ("image", "reference"):
                value = getattr(parsed, field)
                if value is not None:
                    setattr(parsed, field, _media_path(value, Path(path), i, "--i" if field == "image" else "--v"))
            prompts.append(parsed)
    if not prompts:
        raise ValueError(f"--sample_prompts {path}: no prompts (one per line)")
    return prompts


def _media_path(value: str, prompt_file: Path, line: int, flag: str) -> str:
    """A `--i` / `--v` path as given (relative to the working directory), else relative to the prompt file."""
    for candidate in (Path(value).expanduser(), prompt_file.parent / value):
        if candidate.is_file():
            return str(candidate)
    raise ValueError(f"--sample_prompts {prompt_file} line {line + 1}: {flag} {value}: no such file")


def parse_sample_prompts(path: str) -> list[str]:
    """Every text the previews of `path` will look up: each line's prompt and its negative prompt
    (`--n`, or the empty default). Parsed by the previews' own parser, so cache and lookup agree."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--sample_prompts {path!r} does not exist.")
    texts: dict[str, None] = {}
    for p in load_prompts(path):
        texts.setdefault(p.prompt, None)
        texts.setdefault(p.negative_prompt, None)
    return list(texts)
