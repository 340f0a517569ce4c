#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` once per llama-cpp-python version and caches it outside the clone.
#
# The llama-cpp-python sdist (the one `make demo` / `make test` build the wheel from) vendors
# llama.cpp with tools/server; this compiles only the llama-server target of it, statically linked,
# into ${BATCHD_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/batchd}/llama-server-<version>/llama-server.
# A second run finds the binary and returns at once; concurrent runs wait for one build (flock on
# <that dir>.lock, held for the whole build: the tests wait on it too).
#
# Usage: build_llama_server.sh [PYTHON] [--background]
#   PYTHON        the venv's interpreter (default python3): its llama-cpp-python version is built
#   --background  start the build in the background, niced so the tests keep their pace (log: <dir>.log) and return at once;
#                 `make test` does this so the build overlaps the rest of the suite
# Prints the binary's path on stdout when it is there. Exit 0: built, cached or started; 3: impossible
# here (the reason goes to <dir>.unavailable, which the tests quote when they skip); other: failed.
set -euo pipefail
{ # parsed whole before it runs: a checkout that changes this file mid-build cannot derail it

PY=${1:-${PYTHON:-python3}}
BACKGROUND=${2:-}
JOBS=${BATCHD_BUILD_JOBS:-2}
CACHE=${BATCHD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/batchd}
mkdir -p "$CACHE"

unavailable() {  # $1 = <dir>, $2 = reason
    echo "$2" >"$1.unavailable"
    echo "llama-server: $2" >&2
    exit 3
}

if ! VER=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null); then
    unavailable "$CACHE/llama-server" "llama-cpp-python is not installed in $PY (pip install -e '.[embedded]')"
fi
DIR="$CACHE/llama-server-$VER"
BIN="$DIR/llama-server"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
for tool in cmake c++ make tar flock; do
    command -v "$tool" >/dev/null || unavailable "$DIR" "no '$tool' on PATH (Debian: apt-get install cmake g++ make)"
done

build() {
    set -euo pipefail
    local src started
    WORK=$(mktemp -d "$CACHE/.build-$VER.XXXXXX")  # global: the EXIT trap runs after build() returned
    trap 'rm -rf "$WORK"' EXIT
    started=$(date +%s)
    echo ">> llama-server $VER: fetching the llama-cpp-python sdist (pip's cache after the wheel build)"
    "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$WORK" \
        || unavailable "$DIR" "cannot download the llama-cpp-python $VER sdist"
    tar xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
    src=$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)
    [ -f "$src/tools/server/CMakeLists.txt" ] || unavailable "$DIR" "the $VER sdist has no vendor/llama.cpp/tools/server"
    echo ">> llama-server $VER: cmake (Release, static, the server target only, -j$JOBS)"
    cmake -S "$src" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    cmake --build "$WORK/build" --target llama-server -j"$JOBS"
    mkdir -p "$DIR"
    cp "$WORK/build/bin/llama-server" "$BIN.tmp"
    "$BIN.tmp" --version
    mv "$BIN.tmp" "$BIN"                  # atomic: a waiter never sees half a binary
    echo ">> llama-server $VER built in $(( $(date +%s) - started )) s: $BIN"
}

exec 9>"$DIR.lock"
if [ "$BACKGROUND" = --background ]; then
    if ! flock -n 9; then echo ">> llama-server $VER: a build is already running (log: $DIR.log)" >&2; exit 0; fi
    rm -f "$DIR.unavailable"
    # The child inherits fd 9, so the lock stays held until its build ends.
    (renice -n 10 -p "$BASHPID" >/dev/null 2>&1 || true; build) </dev/null >"$DIR.log" 2>&1 &
    echo ">> llama-server $VER: building in the background (~11 min on 2 idle cores; log: $DIR.log)" >&2
    exit 0
fi
flock 9                                   # one build at a time; a waiter finds the binary afterwards
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
rm -f "$DIR.unavailable"
build 2>&1 | tee "$DIR.log" >&2
echo "$BIN"
exit 0
}
