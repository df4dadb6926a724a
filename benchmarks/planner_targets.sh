#!/usr/bin/env bash
# The memory planner's targets (issue 22) in one device call: the naive step, then the benchmark step
# as the planner chooses it for each budget (smaller cards emulated with a per-process memory cap).
# Usage: bash benchmarks/planner_targets.sh OUTDIR [PIECE|SET ...]
#   PIECES: tests naive auto b24 b16 b16host20 fp8 fp8fast fp8tw fp8res fp8res_cg fp8res8 fp8res8_cg fp8cpp fp8lead fp8prof fp8parts val960 image long16 long16peak long24
#           cli8 cli8_b6
#   SETS:   main = naive auto b24 b16 · small = naive b24 b16 b16host20 cli8_b6 · cli = tests cli8 cli8_b6
#           more = naive fp8 fp8parts val960 image · long = naive long16 long24
#           fp8all = naive fp8parts fp8 fp8fast fp8tw (the three ways of scaling the fp8 products)
#           last = naive long24 (what is still to measure, besides fp8cg)
#           fp8cg = naive fp8res8 fp8res8_cg (8 fp8 blocks resident, then replayed as CUDA graphs; fp8res_cg, all
#           48, needs a call of its own, on the warm machine after fp8res)
#           fp8host = naive fp8 fp8cpp (the 45 GiB fp8 step, then the same launched by the C++ wrapper)
# The naive baseline script must sit beside the repository root (naive_baseline.py), as the device call
# copies it there. Each run is time-limited so one failure leaves the others' figures.
set -u
out=${1:-/tmp/planner}; shift; [ $# -eq 0 ] && set -- main
mkdir -p "$out"; res="$out/results.jsonl"
step() { local tag=$1 limit=$2; shift 2
  echo "== $tag: $*" | tee -a "$out/log.txt"
  timeout "$limit" python3 benchmarks/train_step.py --tag "$tag" --results "$res" --flops_cache "$out/flops.json" "$@" \
    >>"$out/log.txt" 2>&1 \
    || echo "RESULT {\"tag\": \"$tag\", \"error\": \"exit $?\"}" | tee -a "$res"
  grep -h "memory plan" "$out/log.txt" | tail -1; grep "\"tag\": \"$tag\"" "$res" | tail -1 | cut -c1-400; }
# the trainer CLI itself (planner, first-step check) on a model of --num_layers blocks
trainer() { local tag=$1 limit=$2; shift 2
  echo "== $tag: trainer $*" | tee -a "$out/log.txt"
  timeout "$limit" python3 benchmarks/trainer_full_size.py --workdir /tmp/ws --items 4 "$@" >"$out/$tag.txt" 2>&1 \
    || echo "RESULT {\"tag\": \"$tag\", \"error\": \"exit $?\"}" >>"$out/$tag.txt"
  grep -h "memory plan\|speed:\|RESULT\|Error" "$out/$tag.txt" | cut -c1-400 | tee -a "$res"; }
piece() { case $1 in
  main) piece naive; piece auto; piece b24; piece b16 ;;
  small) piece naive; piece b24; piece b16; piece b16host20; piece cli8_b6 ;;
  cli) piece tests; piece cli8; piece cli8_b6 ;;
  more) piece naive; piece fp8; piece fp8parts; piece val960; piece image ;;
  fp8all) piece naive; piece fp8parts; piece fp8; piece fp8fast; piece fp8tw ;;
  long) piece naive; piece long16; piece long24 ;;
  last) piece naive; piece long24 ;;
  fp8cg) piece naive; piece fp8res8; piece fp8res8_cg ;;
  fp8host) piece naive; piece fp8; piece fp8cpp ;;
  naive) echo "== naive" | tee -a "$out/log.txt"
    timeout 130 python3 naive_baseline.py 2>&1 | tee -a "$out/naive.txt" | tail -2 ;;
  # the tests whose CUDA variants only run on a GPU (side-stream copies, pinned pieces, offloaded inputs,
  # a text encoder streamed to a GPU too small for it, preview parts moved for previews)
  tests) timeout 240 python3 -m pytest -q -p no:cacheprovider -k "cuda or gpu" tests/test_pinned.py \
      tests/test_activation_offload.py tests/test_speed.py tests/test_optimizer_offload.py \
      tests/test_text_backends.py tests/test_train_units.py 2>&1 | tee "$out/tests.txt" | tail -4 | tee -a "$res" ;;
  auto) step auto 160 --memory_budget auto --steps 6 --warmup 2 ;;
  b24) step b24 135 --memory_budget 24 --emulate_gib 24 --steps 4 --warmup 2 ;;
  b16) step b16 135 --memory_budget 16 --emulate_gib 16 --steps 4 --warmup 2 ;;
  # a host with 20 GiB free: int8 blocks quantized on the GPU one by one and streamed (host_rss_gib vs predicted)
  b16host20) step b16host20 135 --memory_budget 16 --emulate_gib 16 --host_gib 20 --steps 4 --warmup 2 ;;
  fp8) step fp8 150 --memory_budget 45 --fp8_base --steps 6 --warmup 2 ;;
  # the same step with the fp8 products scaled the other ways (speed/quant/fp8.py SCALINGS)
  fp8fast) step fp8fast 150 --memory_budget 45 --fp8_base --fp8_scaling rowwise_fast --steps 6 --warmup 2 ;;
  fp8tw) step fp8tw 150 --memory_budget 45 --fp8_base --fp8_scaling tensorwise --steps 6 --warmup 2 ;;
  # every fp8 block resident (≈57 GiB)
  fp8res) step fp8res 230 --fp8_base --blocks_to_swap 0 --blocks_without_recompute 48 --offload_optimizer --steps 6 --warmup 2 ;;
  # the same with the blocks' compiled graphs replayed as CUDA graphs (what the launches cost the fp8 step)
  # (recording the graphs of 48 blocks, each with its own weights, took over 180 s on an H100: give it a call)
  fp8res_cg) step fp8res_cg 480 --fp8_base --blocks_to_swap 0 --blocks_without_recompute 48 --offload_optimizer \
      --recompute keep+cg --steps 6 --warmup 2 ;;
  # the two above on the model cut to 8 blocks: the launches' cost per block, with 16 graphs to record
  fp8res8) step fp8res8 150 --num_layers 8 --fp8_base --blocks_to_swap 0 --blocks_without_recompute 8 \
      --offload_optimizer --steps 6 --warmup 2 ;;
  fp8res8_cg) step fp8res8_cg 240 --num_layers 8 --fp8_base --blocks_to_swap 0 --blocks_without_recompute 8 \
      --offload_optimizer --recompute keep+cg --steps 6 --warmup 3 ;;
  # the 45 GiB fp8 plan's levers set by hand, its blocks' kernels launched by inductor's C++ wrapper instead of
  # Python (the fp8 step is launch-bound on an H200; every block keeps its attention outputs, so no random op
  # is recomputed)
  fp8cpp) step fp8cpp 300 --fp8_base --blocks_to_swap 46 --blocks_without_recompute 48 --offload_optimizer \
      --recompute keep+cpp --steps 6 --warmup 2 ;;
  # how far the host runs ahead of the GPU at each block of the 45 GiB fp8 step (near 0: host-bound)
  fp8lead) step fp8lead 150 --memory_budget 45 --fp8_base --steps 2 --warmup 2 --lead_trace ;;
  # the compiled fp8 step's kernels by GPU time (train_step.py --profile), into log.txt
  fp8prof) step fp8prof 300 --memory_budget 45 --fp8_base --steps 2 --warmup 2 --profile ;;
  # where the fp8 layers' time goes, part by part (one block's shapes, per step)
  fp8parts) timeout 120 python3 benchmarks/fp8_matmul.py --compiled_quantize --results "$res" 2>&1 \
      | grep -v "^RESULT" | tee -a "$out/log.txt" ;;
  val960) step val960 140 --memory_budget auto --frames 89 --height 544 --width 960 --steps 5 --warmup 2 ;;
  image) step image 110 --memory_budget auto --frames 1 --steps 5 --warmup 2 ;;
  long16) step long16 300 --memory_budget 16 --emulate_gib 16 --frames 241 --height 720 --width 1280 --steps 3 --warmup 1 ;;
  # the same plan's allocated peak broken down by the code that allocated it (one step under the recorder)
  long16peak) step long16peak 300 --memory_budget 16 --emulate_gib 16 --frames 241 --height 720 --width 1280 --steps 1 --warmup 1 --memory_peak ;;
  long24) step long24 150 --memory_budget 24 --emulate_gib 24 --frames 241 --height 720 --width 1280 --steps 2 --warmup 1 ;;
  cli8) trainer cli8 170 --num_layers 8 --steps 6 -- ;;
  cli8_b6) trainer cli8_b6 170 --num_layers 8 --steps 6 --emulate_gib 6 -- --memory_budget 6 ;;
  *) echo "unknown piece: $1" >&2; exit 2 ;;
esac; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm,power.limit --format=csv | tee -a "$out/log.txt"
free -g | tee -a "$out/log.txt"  # the host memory the plans may pin (RESULT: host_rss_gib vs predicted_host_gib)
for p in "$@"; do piece "$p"; done
