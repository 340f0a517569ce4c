#!/usr/bin/env bash
# GPU benchmark (see bench/gpu.py): old one-at-a-time tool vs batchd lanes 1, 2, 4, 8, 16, 32, auto vs a bare
# aiohttp client at each of those on llama.cpp's server with CUDA; ends with auto/best fixed and auto/best bare.
# Prints "no GPU: ..." and exits 0 where there is none.
#   bash bench/gpu.sh [--requests 2000] [--url http://host:port] [--server-bin PATH] [--workdir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m bench.gpu "$@"
