"""benchmarks/cache_throughput.py and benchmarks/trainer_full_size.py at tiny size on the CPU, so the
scripts never rot."""

from __future__ import annotations

import json


def test_cache_throughput_smoke(tmp_path, capsys, bench_script):
    bench = bench_script("cache_throughput")
    assert bench.main(["--preset", "tiny", "--device", "cpu", "--clips", "2", "--frames", "9",
                       "--resolution", "64", "64", "--workdir", str(tmp_path)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("{"))
    res = json.loads(line)
    assert res["clips"] == 2 and res["clip"] == "64x64x9"
    assert res["job_clips_per_s"] > 0 and res["decode_only_clips_per_s"] > 0 and res["encode_only_clips_per_s"] > 0


def test_trainer_full_size_benchmark_smoke(tmp_path, bench_script):
    """benchmarks/trainer_full_size.py at tiny size: writes model, cache and dataset.toml, trains through
    the trainer CLI and reads the trainer's own per-step times back."""
    bench = bench_script("trainer_full_size")
    res = bench.main(["--preset", "tiny", "--workdir", str(tmp_path), "--steps", "4", "--rank", "4",
                      "--", "--learning_rate", "1e-3"])
    assert res["exit"] == 0 and res["steps"] == 4 and res["flags"] == ["--learning_rate", "1e-3"]
    assert len(res["times"]) == 2 and res["s_per_step"] > 0 and len(set(res["losses"])) == 4
    assert (tmp_path / "run" / "lora.safetensors").is_file()
    import gc

    assert gc.get_freeze_count() == 0  # the trainer froze the collector after its first step, then thawed it
