#!/usr/bin/env bash
# Build and install Horovod 0.28.1 for the venv's torch, with a wheel cache.  Best effort.
#
#   bash scripts/build_horovod.sh [PYTHON]        (PYTHON: the venv's python, default .venv/bin/python)
#
# Horovod's last release (0.28.1, 2023) does not build against current torch as shipped: its CMake
# files force C++14, while torch >= 2.1 needs C++17 and torch 2.14 needs C++20.  This script:
#   1. exits at once when `import horovod.torch` already works in that python (make setup stays fast);
#   2. else installs a wheel built earlier from .cache/wheels/<torch version, python tag, variant>/;
#   3. else downloads the sdist, patches the CMake files for this torch / toolchain, builds the
#      wheel into that cache (log: .cache/horovod-build.log) and installs it.
# On failure it prints the end of the log and one line of reason and exits 0: matrec falls back to
# torch.distributed.  HOROVOD_REQUIRED=1 makes a failure exit 1 instead.
#
# Knobs (environment): HOROVOD_REQUIRED=1, HOROVOD_BUILD_JOBS (default: nproc),
# HOROVOD_SDIST (a local horovod-0.28.1.tar.gz, for hosts without PyPI),
# HOROVOD_BUILD_CUDA_CC_LIST (default: the GPUs' compute capabilities, else 90),
# HOROVOD_GPU_OPERATIONS / HOROVOD_NCCL_HOME (default: NCCL when a GPU and NCCL are found).
set -uo pipefail

HOROVOD_VERSION=0.28.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
CACHE="$ROOT/.cache"
LOG="$CACHE/horovod-build.log"

# The import check and a one-line `horovodrun --check-build` in one interpreter (~3 s; horovodrun
# --check-build itself takes 10-25 s, too slow for every `make setup`).
check_python='import horovod, horovod.torch as hvd
b = lambda f: "[X]" if f() else "[ ]"
print(f"Horovod v{horovod.__version__}: PyTorch [X]; Gloo {b(hvd.gloo_built)}, NCCL {b(hvd.nccl_built)}, MPI {b(hvd.mpi_built)}")'

# After an install: what `horovodrun --check-build` says.
print_check() {
    local hvdrun
    hvdrun="$(dirname "$PY")/horovodrun"
    if [ -x "$hvdrun" ]; then
        "$hvdrun" --check-build
    else
        "$PY" -c "$check_python"
    fi
}

LOG_STARTED=0  # the log is this run's: show its end on failure

fail() {
    if [ "$LOG_STARTED" = 1 ] && [ -s "$LOG" ]; then
        echo "---- last 30 lines of $LOG"
        tail -n 30 "$LOG"
        echo "----"
    fi
    echo "Horovod unavailable: $1; matrec falls back to torch.distributed"
    if [ "${HOROVOD_REQUIRED:-0}" = 1 ]; then
        exit 1
    fi
    exit 0
}

if [ ! -x "$PY" ]; then
    fail "no python at $PY (run make setup first)"
fi

# 1. Already installed and importable: nothing to do.
if check="$("$PY" -c "$check_python" 2>/dev/null)"; then
    echo "$check (already installed)"
    exit 0
fi

mkdir -p "$CACHE/wheels"
# Two setups at once (make -j) would build twice: serialise, then look again.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/horovod-build.lock"
    flock 9
    if check="$("$PY" -c "$check_python" 2>/dev/null)"; then
        echo "$check (installed meanwhile)"
        exit 0
    fi
fi

# What this torch / host needs, as shell assignments (values are plain tokens or paths).
probe="$("$PY" - <<'EOF' 2>/dev/null
import os, platform, sys
import torch
v = torch.__version__
base = v.split("+")[0].split(".")
major, minor = int(base[0]), int(base[1])
print(f"TORCH_VERSION='{v}'")
print(f"TORCH_MM='{major}.{minor}'")
print(f"PY_TAG='cp{sys.version_info.major}{sys.version_info.minor}'")
print(f"ARCH='{platform.machine()}'")
# C++ standard the torch headers need; Horovod's CMake files say 14.
std = 20 if (major, minor) >= (2, 14) else 17 if (major, minor) >= (2, 1) else 14
print(f"CXX_STD='{std}'")
print(f"TORCH_CUDA='{1 if torch.version.cuda else 0}'")
gpus = torch.cuda.device_count() if torch.version.cuda and torch.cuda.is_available() else 0
print(f"GPUS='{gpus}'")
ccs = sorted({"%d%d" % torch.cuda.get_device_capability(i) for i in range(gpus)})
print(f"GPU_CCS='{','.join(ccs)}'")
nccl = ""
try:
    import nvidia.nccl as n
    for d in n.__path__:
        if os.path.isfile(os.path.join(d, "include", "nccl.h")):
            nccl = d
except Exception:
    pass
print(f"PIP_NCCL='{nccl}'")
EOF
)" || fail "cannot import torch in $PY"
eval "$probe"

# CUDA build of torch and a CUDA toolkit with nvcc: Horovod's CMake then builds its CUDA parts and
# needs the toolkit's real home (torch guesses /usr/local from a /usr/local/bin/nvcc wrapper).
CUDA_DIR=""
if [ "$TORCH_CUDA" = 1 ]; then
    for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
        if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then CUDA_DIR="$d"; break; fi
    done
    if [ -z "$CUDA_DIR" ] && command -v nvcc >/dev/null 2>&1; then
        d="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
        if [ -f "$d/include/cuda_runtime.h" ]; then CUDA_DIR="$d"; fi
    fi
fi
# NCCL ops only on a host with a GPU and NCCL (a caller's HOROVOD_GPU_OPERATIONS wins).
USE_NCCL=0
if [ -n "$CUDA_DIR" ] && [ "$GPUS" -gt 0 ] && [ -z "${HOROVOD_GPU_OPERATIONS:-}" ]; then
    if [ -n "${HOROVOD_NCCL_HOME:-}" ] || [ -n "$PIP_NCCL" ] \
        || [ -f /usr/include/nccl.h ] || [ -f "$CUDA_DIR/include/nccl.h" ]; then
        USE_NCCL=1
    fi
fi
if [ -n "$CUDA_DIR" ]; then
    if [ -n "${HOROVOD_GPU_OPERATIONS:-}" ] || [ "$USE_NCCL" = 1 ]; then VARIANT=nccl; else VARIANT=cuda; fi
else
    VARIANT=cpu
fi

WHEELS="$CACHE/wheels/torch-$TORCH_VERSION-$PY_TAG-$ARCH-$VARIANT"
mkdir -p "$WHEELS"

install_wheel() {
    "$PY" -m pip install --disable-pip-version-check -q "$1" >>"$LOG" 2>&1 \
        && "$PY" -c "import horovod.torch" >>"$LOG" 2>&1
}

# 2. A wheel built earlier for this torch / python / variant.
wheel="$(ls -t "$WHEELS"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n 1)"
if [ -n "$wheel" ]; then
    echo "installing Horovod $HOROVOD_VERSION from the cached wheel ${wheel#"$ROOT"/}"
    echo "== $(date -u +%FT%TZ) install $wheel" >>"$LOG"
    LOG_STARTED=1
    if install_wheel "$wheel"; then
        print_check || true
        exit 0
    fi
    echo "the cached wheel does not install or import (see ${LOG#"$ROOT"/}); rebuilding it"
    mv -f "$wheel" "$wheel.broken"
fi

# 3. Build the wheel from the sdist.
for tool in "${CXX:-c++}" make; do
    command -v "$tool" >/dev/null 2>&1 || fail "no '$tool' to build it with (install build-essential)"
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

{
    echo "== $(date -u +%FT%TZ) build Horovod $HOROVOD_VERSION with $PY"
    echo "torch $TORCH_VERSION ($PY_TAG, $ARCH), C++$CXX_STD, variant $VARIANT, CUDA home '${CUDA_DIR:-none}', GPUs $GPUS"
} >"$LOG"
LOG_STARTED=1
echo "building Horovod $HOROVOD_VERSION for torch $TORCH_VERSION ($VARIANT); takes minutes;" \
    "log: ${LOG#"$ROOT"/}"

if [ -n "${HOROVOD_SDIST:-}" ]; then
    # An offline host: the sdist copied there beforehand.
    [ -f "$HOROVOD_SDIST" ] || fail "HOROVOD_SDIST=$HOROVOD_SDIST is not a file"
    cp "$HOROVOD_SDIST" "$TMP/horovod-$HOROVOD_VERSION.tar.gz" || fail "could not copy $HOROVOD_SDIST"
else
    "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: \
        "horovod==$HOROVOD_VERSION" -d "$TMP" >>"$LOG" 2>&1 \
        || fail "could not download the horovod $HOROVOD_VERSION sdist (offline? set HOROVOD_SDIST)"
fi
tar -xzf "$TMP/horovod-$HOROVOD_VERSION.tar.gz" -C "$TMP" >>"$LOG" 2>&1 || fail "could not unpack the sdist"
SRC="$TMP/horovod-$HOROVOD_VERSION"

# Patch: the C++ standard torch's headers need (top level and the torch extension).
if [ "$CXX_STD" != 14 ]; then
    for f in CMakeLists.txt horovod/torch/CMakeLists.txt; do
        sed -i "s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD $CXX_STD)/" "$SRC/$f"
        grep -q "set(CMAKE_CXX_STANDARD $CXX_STD)" "$SRC/$f" || fail "patching C++$CXX_STD into $f did not apply"
        echo "patched $f: CMAKE_CXX_STANDARD $CXX_STD" >>"$LOG"
    done
fi

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1
export PATH="$(dirname "$PY"):$PATH"
# setup.py passes -j8 unless MAKEFLAGS is set; a calling make's MAKEFLAGS would leak in otherwise.
export MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

cmake_version="$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9][0-9]*\).*/\1/p')"
if [ -n "$cmake_version" ] && [ "$cmake_version" -ge 4 ]; then
    # CMake 4 refuses the bundled third-party projects' cmake_minimum_required(VERSION 2.8).
    export CMAKE_POLICY_VERSION_MINIMUM=3.5
    echo "CMake $cmake_version: CMAKE_POLICY_VERSION_MINIMUM=3.5" >>"$LOG"
fi
gcc_version="$("${CXX:-c++}" -dumpfullversion -dumpversion 2>/dev/null | cut -d. -f1)"
if "${CXX:-c++}" -v 2>&1 | grep -q '^gcc version' && [ "${gcc_version:-0}" -ge 13 ]; then
    # GCC 13 no longer includes these transitively; the bundled sources rely on it.
    export CXXFLAGS="-include cstdint -include string -include stdexcept ${CXXFLAGS:-}"
    echo "GCC $gcc_version: CXXFLAGS=$CXXFLAGS" >>"$LOG"
fi

if [ -n "$CUDA_DIR" ]; then
    export CUDA_HOME="$CUDA_DIR" HOROVOD_CUDA_HOME="$CUDA_DIR"
    export HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-${GPU_CCS:-90}}"
    nvcc_major="$("$CUDA_DIR/bin/nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p')"
    if [ "${nvcc_major:-0}" -ge 13 ]; then
        # CUDA 13's headers need C++17; Horovod pins its kernels to C++11.
        f=horovod/common/ops/cuda/CMakeLists.txt
        sed -i 's/set(CMAKE_CUDA_STANDARD 11)/set(CMAKE_CUDA_STANDARD 17)/' "$SRC/$f"
        grep -q 'set(CMAKE_CUDA_STANDARD 17)' "$SRC/$f" || fail "patching CUDA C++17 into $f did not apply"
        echo "patched $f: CMAKE_CUDA_STANDARD 17 (nvcc $nvcc_major)" >>"$LOG"
    fi
    echo "CUDA: CUDA_HOME=$CUDA_DIR HOROVOD_BUILD_CUDA_CC_LIST=$HOROVOD_BUILD_CUDA_CC_LIST" >>"$LOG"
    if [ "$USE_NCCL" = 1 ]; then
        export HOROVOD_GPU_OPERATIONS=NCCL
        if [ -z "${HOROVOD_NCCL_HOME:-}" ] && [ -n "$PIP_NCCL" ]; then
            # The pip nvidia-nccl package ships only libnccl.so.2: give CMake a home with libnccl.so.
            # At run time `import torch` has loaded libnccl.so.2 already.
            mkdir -p "$TMP/nccl/lib"
            ln -s "$PIP_NCCL/include" "$TMP/nccl/include"
            for lib in "$PIP_NCCL"/lib/libnccl.so*; do ln -sf "$lib" "$TMP/nccl/lib/"; done
            [ -e "$TMP/nccl/lib/libnccl.so" ] || ln -s "$PIP_NCCL/lib/libnccl.so.2" "$TMP/nccl/lib/libnccl.so"
            export HOROVOD_NCCL_HOME="$TMP/nccl" HOROVOD_NCCL_LINK=SHARED
        fi
        echo "NCCL: HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_HOME=${HOROVOD_NCCL_HOME:-system}" >>"$LOG"
    fi
fi
env | grep -E '^(HOROVOD_|CUDA_HOME|CMAKE_|CXXFLAGS|MAKEFLAGS)' | sort >>"$LOG"

start=$SECONDS
mkdir -p "$TMP/dist"
"$PY" -m pip wheel --disable-pip-version-check -v --no-build-isolation --no-deps \
    -w "$TMP/dist" "$SRC" >>"$LOG" 2>&1 &
build_pid=$!
# Progress while it builds: CMake's own percentage from the log, every 20 s.
while kill -0 "$build_pid" 2>/dev/null; do
    sleep 20
    percent="$(grep -o '\[ *[0-9]\+%\]' "$LOG" 2>/dev/null | tail -n 1 | tr -dc '0-9' || true)"
    echo "  Horovod build: ${percent:-0}% after $((SECONDS - start)) s"
done
wait "$build_pid" || fail "the Horovod $HOROVOD_VERSION build failed (full log: ${LOG#"$ROOT"/})"
built="$(ls "$TMP"/dist/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n 1)"
[ -n "$built" ] || fail "pip wheel made no horovod wheel"
mv -f "$built" "$WHEELS/" || fail "could not store the wheel in ${WHEELS#"$ROOT"/}"
wheel="$WHEELS/$(basename "$built")"
echo "built ${wheel#"$ROOT"/} in $((SECONDS - start)) s"
echo "== built $wheel in $((SECONDS - start)) s" >>"$LOG"

install_wheel "$wheel" || fail "the freshly built wheel does not install or import"
print_check || true
