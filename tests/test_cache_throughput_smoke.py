"""benchmarks/cache_throughput.py at tiny size on the CPU, so the script never rots."""

from __future__ import annotations

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_cache_throughput_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_cache", ROOT / "benchmarks" / "cache_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--preset", "tiny", "--device", "cpu", "--clips", "2", "--frames", "9",
                       "--resolution", "64", "64", "--workdir", str(tmp_path)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("{"))
    res = json.loads(line)
    assert res["clips"] == 2 and res["clip"] == "64x64x9"
    assert res["job_clips_per_s"] > 0 and res["decode_only_clips_per_s"] > 0 and res["encode_only_clips_per_s"] > 0
