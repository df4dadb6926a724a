"""`--push_to_hub`: upload the trained LoRA (both formats), previews and a model card via huggingface_hub."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

CARD_TEMPLATE = """\
# {repo_name}

LoRA for [LTX-2]({base_link}) trained with {trainer} in `{mode}` mode ({mode_text}).

| | |
|---|---|
| base model | `{base_model}` |
| mode | `{mode}` |
| rank / alpha | {rank} / {alpha} |
| steps | {steps} |
| learning rate | {learning_rate} |
| timestep format | `{timestep_format}` |

## Files

- `{name}.safetensors`: official/ComfyUI layout (loads in ComfyUI, the official LTX-2 pipelines and
  diffusers' `LTX2Pipeline.load_lora_weights`).
- `{name}-diffusers/pytorch_lora_weights.safetensors`: diffusers layout.

## Use with diffusers

```python
from diffusers import LTX2Pipeline
pipe = LTX2Pipeline.from_pretrained("Lightricks/LTX-2")
pipe.load_lora_weights("{repo_id}", weight_name="{name}.safetensors")
```
{previews}"""

MODE_TEXT = {"video": "video only", "av": "joint audio and video", "audio": "audio only"}


class HubUploadError(RuntimeError):
    """`--push_to_hub` could not upload; the message says where the files are and how to retry."""


def trainer_credit() -> str:
    """`ltxv2-diffusers <version>`, linked to the project's home page when its metadata names one."""
    from importlib.metadata import PackageNotFoundError, metadata

    from ltxv2_diffusers import __version__

    try:
        meta = metadata("ltxv2-diffusers")
    except PackageNotFoundError:
        return f"ltxv2-diffusers {__version__}"
    urls = [meta.get("Home-page")] + [u.split(",", 1)[-1].strip() for u in meta.get_all("Project-URL") or []]
    url = next((u for u in urls if u and u.startswith("https://")), None)
    return f"[ltxv2-diffusers {__version__}]({url})" if url else f"ltxv2-diffusers {__version__}"


def model_card_text(args, repo_id: str, lora_name: str, step: int, previews: Sequence[str]) -> str:
    """The README.md of the Hub repo: base model, mode, rank, steps and the sample previews."""
    from huggingface_hub import ModelCard, ModelCardData

    base = str(args.ltxv2_model)
    base_is_hub = not Path(base).exists() and base.count("/") == 1
    data = ModelCardData(
        library_name="diffusers",
        base_model=base if base_is_hub else None,
        tags=["ltx-2", "lora", "text-to-video", "ltxv2-diffusers", f"ltx-mode-{args.mode.value}"],
        license="other",
    )
    preview_md = ""
    if previews:
        preview_md = "\n## Previews\n\n" + "\n".join(f"- [{Path(p).name}]({p})" for p in previews) + "\n"
    body = CARD_TEMPLATE.format(
        repo_name=repo_id.split("/")[-1], repo_id=repo_id, name=lora_name,
        trainer=trainer_credit(), base_link=f"https://huggingface.co/{base}" if base_is_hub else "https://huggingface.co/Lightricks/LTX-2",
        base_model=base if base_is_hub else Path(base).name, mode=args.mode.value, mode_text=MODE_TEXT[args.mode.value],
        rank=args.network_dim, alpha=args.network_alpha, steps=step, learning_rate=args.learning_rate,
        timestep_format=args.timestep_format.value, previews=preview_md,
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def stage_upload(args, output_dir: Path, lora_file: Path, step: int, previews: Sequence[Path]) -> Path:
    """Copy what gets uploaded into `OUTPUT_DIR/hub_upload/` (LoRA files, previews, README.md)."""
    output_dir = Path(output_dir)
    stage = output_dir / "hub_upload"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    lora_file = Path(lora_file)
    name = lora_file.stem
    shutil.copy2(lora_file, stage / lora_file.name)
    diffusers_dir = lora_file.with_name(f"{name}-diffusers")
    if diffusers_dir.is_dir():
        shutil.copytree(diffusers_dir, stage / diffusers_dir.name)
    rel_previews = []
    for preview in previews:
        preview = Path(preview)
        if preview.is_file():
            (stage / "samples").mkdir(exist_ok=True)
            shutil.copy2(preview, stage / "samples" / preview.name)
            rel_previews.append(f"samples/{preview.name}")
    loss_png = output_dir / "loss.png"
    if loss_png.is_file():
        shutil.copy2(loss_png, stage / "loss.png")
    (stage / "README.md").write_text(model_card_text(args, args.hub_model_id, name, step, rel_previews), encoding="utf-8")
    return stage


def push_lora(args, output_dir: Path, lora_file: Path, step: int, previews: Sequence[Path] = (),
              api: Any = None) -> str:
    """Create the repo (if needed) and upload the staged folder; returns the repo URL.

    Any failure of the Hub (offline, no network, no token, no permission) is a `HubUploadError`
    whose one line names the staged folder and the command that uploads it later.
    """
    from huggingface_hub import HfApi

    api = api or HfApi(token=args.hub_token)
    stage = stage_upload(args, output_dir, lora_file, step, previews)
    try:
        repo = api.create_repo(repo_id=args.hub_model_id, private=args.hub_private, exist_ok=True, repo_type="model")
        repo_id = getattr(repo, "repo_id", None) or args.hub_model_id
        api.upload_folder(repo_id=repo_id, folder_path=str(stage), repo_type="model",
                          commit_message=f"LoRA ({args.mode.value}, rank {args.network_dim}, {step} steps)")
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HubUploadError(f"--push_to_hub {args.hub_model_id}: upload failed ({type(exc).__name__}: {reason}); "
                             f"the LoRA is saved, and `hf upload {args.hub_model_id} {stage}` uploads it later") from exc
    return str(getattr(repo, "url", f"https://huggingface.co/{repo_id}"))
