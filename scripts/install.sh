#!/usr/bin/env bash
# Create .venv and install Tunery into it: scripts/install.sh [EXTRAS]   (default: demo)
#
# Torch is installed first and explicitly, so that a machine without a GPU never downloads
# a multi-GB CUDA build: with no torch present, `pip install -e .` would resolve `torch>=2.4`
# to PyPI's default Linux wheel, which is the CUDA one.
#
#   GPU (nvidia-smi works)  torch==2.13.0 from PyPI (CUDA build)
#   no GPU                  torch==2.13.0+cpu from pip's configured indexes / find-links,
#                           then, if that fails, from the PyTorch CPU index
#   macOS                   torch==2.13.0 (PyPI's macOS wheels are CPU/MPS builds)
#
# Environment:
#   TUNERY_TORCH_SPEC      pip arguments that replace the choice above, e.g.
#                          "torch==2.13.0+cu126 --index-url https://download.pytorch.org/whl/cu126"
#   PYTHON                 the interpreter that creates .venv (default python3.11, else python3)
#   VENV                   where the environment lives (default .venv in the repository)
#   TUNERY_FORCE_INSTALL=1 reinstall the project even if nothing changed
#
# Idempotent: when torch already imports at the wanted version and the project was installed
# with the same extras from the same pyproject.toml, it only checks and returns.
set -euo pipefail

TORCH_VERSION="2.13.0"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXTRAS="${1:-demo}"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"

say() { printf 'install: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

python_is_supported() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && python_is_supported "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# --- the virtual environment -------------------------------------------------------------
if [ ! -x "$PY" ]; then
  base_python="$(find_python)" || die "Python 3.11 or newer is needed (python3.11 or python3); \
set PYTHON=/path/to/python3.11 to choose one."
  say "creating $VENV with $base_python ($("$base_python" -V 2>&1))"
  "$base_python" -m venv "$VENV" || die "could not create $VENV; on Debian/Ubuntu install \
the venv module first: sudo apt-get install python3.11-venv (or python3-venv)"
  "$PY" -m pip install --quiet --upgrade pip
fi
python_is_supported "$PY" || die "$VENV uses $("$PY" -V 2>&1); Tunery needs 3.11+. \
Remove $VENV and run this again."

pip_install() { "$PY" -m pip install --quiet "$@"; }

# --- torch -------------------------------------------------------------------------------
installed_torch() {
  "$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true
}

have_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

torch_is_wanted() {
  # $1: installed version ("" when torch does not import)
  local version="$1" wanted
  [ -n "$version" ] || return 1
  if [ -n "${TUNERY_TORCH_SPEC:-}" ]; then
    # "torch==X[+local] ..." pins a version; any other spec is satisfied by a working torch
    wanted="$(printf '%s\n' "$TUNERY_TORCH_SPEC" | sed -n 's/.*torch==\([^[:space:]]*\).*/\1/p')"
    [ -z "$wanted" ] && return 0
    case "$wanted" in
      *+*) [ "$version" = "$wanted" ] ;;
      *) [ "${version%%+*}" = "$wanted" ] ;;
    esac
    return
  fi
  [ "${version%%+*}" = "$TORCH_VERSION" ] || return 1
  # a GPU host with a CPU-only build would silently train on the CPU
  if have_gpu && [ "${version#*+}" = "cpu" ]; then
    return 1
  fi
  return 0
}

current="$(installed_torch)"
changed=1
if torch_is_wanted "$current"; then
  say "torch $current already installed"
  changed=0
elif [ -n "${TUNERY_TORCH_SPEC:-}" ]; then
  read -r -a spec <<<"$TUNERY_TORCH_SPEC"
  say "installing torch from TUNERY_TORCH_SPEC: ${spec[*]}"
  pip_install "${spec[@]}"
elif have_gpu || [ "$(uname -s)" = "Darwin" ]; then
  say "installing torch==$TORCH_VERSION"
  pip_install "torch==$TORCH_VERSION"
else
  say "no GPU found (nvidia-smi): installing the CPU build torch==$TORCH_VERSION+cpu"
  if ! pip_install "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
    say "not in the configured indexes; trying the PyTorch CPU index"
    pip_install "torch==$TORCH_VERSION+cpu" --extra-index-url "$CPU_INDEX"
  fi
fi

# --- the project -------------------------------------------------------------------------
# Two distributions: tunery-client (tunery_client/: the `tunery` command and its client
# verbs, no torch) and tunery (the server, which depends on the client and adds its verbs).
# One pip call, so that the server's `tunery-client` requirement is met by the folder.
stamp="$VENV/.tunery-install"
want_stamp="extras=$EXTRAS pyproject=$(cat pyproject.toml tunery_client/pyproject.toml | cksum | cut -d' ' -f1)"
if [ "${TUNERY_FORCE_INSTALL:-0}" != "1" ] && [ -x "$VENV/bin/tunery" ] \
  && [ -f "$stamp" ] && grep -qxF "$want_stamp" "$stamp" \
  && "$PY" -c 'import importlib.metadata as m; m.version("tunery"); m.version("tunery-client")' 2>/dev/null; then
  say "tunery[$EXTRAS] already installed"
else
  say "installing tunery-client and tunery[$EXTRAS] (editable)"
  pip_install -e ./tunery_client -e ".[$EXTRAS]"
  if [ ! -x "$VENV/bin/tunery" ]; then
    # an environment from before the split: pip removed the old server, which owned the
    # `tunery` script, after it had installed the client's
    pip_install --force-reinstall --no-deps -e ./tunery_client
  fi
  changed=1
  # several extras sets may be installed in one venv (make run, then make test)
  : >"$stamp.new"
  if [ -f "$stamp" ]; then
    grep -vF "extras=$EXTRAS " "$stamp" >"$stamp.new" || true
  fi
  echo "$want_stamp" >>"$stamp.new"
  mv "$stamp.new" "$stamp"
fi

# --- check -------------------------------------------------------------------------------
# (when nothing was installed, the import above already was the check)
version="$current"
if [ "$changed" = "1" ]; then
  version="$("$PY" -c 'import torch; print(torch.__version__)')" \
    || die "torch does not import in $VENV"
fi
if ! torch_is_wanted "$version"; then
  say "warning: torch is $version, not the wanted build (pip may have replaced it)"
fi
say "ready: $VENV (torch $version, extras $EXTRAS)"
