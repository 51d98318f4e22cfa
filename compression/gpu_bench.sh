#!/usr/bin/env bash
# The prepared GPU benchmark, for a session that has a CUDA machine (the CPU-only task that wrote it could not
# run it). One command, ~5-10 minutes on an H100: the embedded tiny model and the SD-1.5-config UNet, fp16
# baseline (the pipeline's own CUDA dtype) against bf16, int8 weights, int8 dynamic (torchao), fp8 (torchao,
# sm89+), 2:4 semi-structured sparse Linears (sm80+), structured channel pruning (~30% of parameters) alone
# and with fp8. Every setting is timed in alternating rounds with the fp16 baseline of the same run; a setting
# the GPU cannot do is recorded as skipped with the reason, one that fails as an error, and the run goes on.
#
#   bash compression/gpu_bench.sh                 # writes assets/results/bench_cuda.json (the GPU is named in it)
#   bash compression/gpu_bench.sh --compile       # also time each setting under torch.compile (compile time apart)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here')"
python -m compression.bench --device cuda --model both --threads 8 --repeats 10 --warmup 3 \
    --out assets/results/bench_cuda.json "$@"
