#!/usr/bin/env bash
# Set up ltxv2-diffusers in ./.venv on a machine that has only Python.
# Usage: ./install.sh            (runtime)
#        ./install.sh --dev      (runtime + test dependencies, incl. the ltx-core reference)
# On a machine without an NVIDIA GPU a CPU build of torch is installed first, so pip never
# pulls a multi-GB CUDA build. Set LTXV2_TORCH_SPEC to choose another torch (e.g. "torch==2.8.0").
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if [ -n "${LTXV2_TORCH_SPEC:-}" ]; then
    "${PIP[@]}" install "$LTXV2_TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" install torch
  else
    # Prefer a local/pinned CPU wheel; fall back to PyTorch's CPU index.
    "${PIP[@]}" install torch==2.13.0 2>/dev/null \
      || "${PIP[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
if [ "${1:-}" = "--dev" ]; then
  "${PIP[@]}" install -e ".[dev]"
  # The official reference implementation, used by tests only; --no-deps because its
  # torchaudio pin would pull another torch.
  "${PIP[@]}" install --no-deps "ltx-core==1.0.0"
  # torchaudio is only the reference for our torchaudio-free log-mel (tests compare against
  # ltx-core's AudioProcessor). Its compiled parts are built for another torch, so they are removed:
  # the transforms the tests use are pure Python. Best effort: without it those comparisons skip.
  if ! .venv/bin/python -c "import torchaudio" >/dev/null 2>&1; then
    if "${PIP[@]}" install --no-deps "torchaudio==2.11.0" 2>/dev/null; then
      find "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torchaudio" \
        -name "*.so" -delete
    else
      echo "note: torchaudio not installed; log-mel reference comparisons will be skipped"
    fi
  fi
else
  "${PIP[@]}" install -e .
fi
echo "installed into $(pwd)/.venv"
