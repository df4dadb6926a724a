"""Exploration: which speed levers matter for the full-size LTX-2 AV LoRA step on one GPU.

Builds the 19B transformer once (random bf16 weights), adds rank-32 LoRA on attention projections,
then times several step variants in sequence (compile last, since it mutates modules).
Usage: python benchmarks/levers.py [--layers 48] [--variants autocast,bf16,cudnn,flash,compile]
"""
import argparse, json, time
import torch

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=48)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--variants", default="autocast,bf16,cudnn,flash,compile")
a = p.parse_args()
dev = "cuda"
from diffusers import LTX2VideoTransformer3DModel
from peft import LoraConfig

torch.set_default_dtype(torch.bfloat16)
with torch.device(dev):
    model = LTX2VideoTransformer3DModel(num_layers=a.layers, rope_type="split")
torch.set_default_dtype(torch.float32)
model.requires_grad_(False)
model.add_adapter(LoraConfig(r=32, lora_alpha=32, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
lora = [p_ for p_ in model.parameters() if p_.requires_grad]
model.enable_gradient_checkpointing(); model.train()
F, H, W = 16, 16, 24; nv = F * H * W; na = 126; B = 1; L = 1024
cfg = model.config
g = torch.Generator(dev).manual_seed(0)
def batch():
    r = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16, generator=g)
    return dict(hidden_states=r(B, nv, 128), audio_hidden_states=r(B, na, 128),
                encoder_hidden_states=r(B, L, cfg.caption_channels), audio_encoder_hidden_states=r(B, L, cfg.caption_channels),
                timestep=torch.full((B,), 500.0, device=dev), num_frames=F, height=H, width=W, fps=24.0,
                audio_num_frames=na, return_dict=False)

def run(name, autocast, lora_dtype, steps=a.steps):
    for p_ in lora: p_.data = p_.data.to(lora_dtype)
    opt = torch.optim.AdamW(lora, lr=1e-4)
    def step():
        b = batch()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            v, au = model(**b)
        loss = v.float().pow(2).mean() + au.float().pow(2).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for _ in range(2): step()
    torch.cuda.synchronize(); warm = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats(); ts = []
    for _ in range(steps):
        torch.cuda.synchronize(); t = time.perf_counter(); step(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t)
    ts.sort()
    print("RESULT " + json.dumps(dict(variant=name, s_per_step=round(ts[len(ts)//2], 3), min=round(ts[0], 3),
          peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1), warmup_s=round(warm, 1))), flush=True)

for v in a.variants.split(","):
    try:
        if v == "autocast":
            model.reset_attention_backend() if hasattr(model, "reset_attention_backend") else None
            run(v, True, torch.float32)
        elif v == "bf16":
            run(v, False, torch.bfloat16)
        elif v in ("cudnn", "flash"):
            model.set_attention_backend("_native_cudnn" if v == "cudnn" else "_native_flash")
            run(v, False, torch.bfloat16)
        elif v in ("compile", "compile_cudnn"):
            if v == "compile_cudnn":
                model.set_attention_backend("_native_cudnn")
            if not getattr(model, "_blocks_compiled", False):
                for blk in model.transformer_blocks:
                    blk.compile(dynamic=False)
                model._blocks_compiled = True
            run(v, False, torch.bfloat16)
        elif v == "compile_full":
            model.compile(dynamic=False)
            run(v, False, torch.bfloat16)
        elif v == "profile":
            from torch.profiler import profile, ProfilerActivity
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                run(v, False, torch.bfloat16, steps=1)
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60), flush=True)
    except Exception as e:  # keep measuring the other variants
        print(f"VARIANT {v} FAILED: {type(e).__name__}: {str(e)[:500]}", flush=True)
