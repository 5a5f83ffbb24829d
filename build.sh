#!/usr/bin/env bash
# Borda's build entry point.
#   ./build.sh demo   create .venv, install Borda, run the main job
#   ./build.sh test   install the test extras, check wasm_modules/ is rebuilt
#                     byte-identically from guest/, run ruff, mypy and pytest
#   ./build.sh wasm   compile guest/ into wasm_modules/ (pinned ziglang)
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"

ensure_venv() {
    if [[ ! -x "$PY" ]]; then
        local base
        base="$(command -v python3.11 || command -v python3)"
        "$base" -m venv "$VENV"
        "$PY" -m pip install --quiet --upgrade pip
    fi
}

# module name -> guest sources (relative to guest/); every module also gets runtime/
declare -A MODULES=(
    [borda_kernels]="kernels/*.c runtime/kernel_exports.c runtime/kernel_invoke.c"
    [borda_llama]="kernels/*.c models/llama.c"
    [borda_bert]="kernels/*.c models/bert.c"
)
RUNTIME="runtime/arena.c runtime/abi.c runtime/msgpack.c runtime/model_common.c"
CFLAGS=(--target=wasm32-freestanding -nostdlib -std=c11 -O3 -msimd128 -mrelaxed-simd
        -ffp-contract=off -Wall -Wextra -Werror -Iinclude
        -Wl,--no-entry -Wl,--strip-all -Wl,-z,stack-size=1048576)

build_wasm() {  # build_wasm OUTDIR
    local out
    out="$(cd "$1" && pwd)"
    local cache
    cache="$(mktemp -d)"
    (
        cd guest
        for name in $(printf '%s\n' "${!MODULES[@]}" | sort); do
            # shellcheck disable=SC2086
            ZIG_GLOBAL_CACHE_DIR="$cache" ZIG_LOCAL_CACHE_DIR="$cache" \
                "$OLDPWD/$PY" -m ziglang cc "${CFLAGS[@]}" $RUNTIME ${MODULES[$name]} \
                -o "$out/$name.wasm"
        done
    )
    rm -rf "$cache"
    (cd "$out" && sha256sum ./*.wasm | sed 's# \./# #' > SHA256SUMS)
}

cmd_wasm() {
    ensure_venv
    "$PY" -m pip install --quiet -e ".[build]"
    mkdir -p wasm_modules
    build_wasm wasm_modules
    cat wasm_modules/SHA256SUMS
}

check_wasm_reproducible() {
    local tmp
    tmp="$(mktemp -d)"
    build_wasm "$tmp"
    if ! diff -r "$tmp" wasm_modules >/dev/null; then
        echo "wasm_modules/ does not match guest/: run ./build.sh wasm and commit the result" >&2
        diff "$tmp/SHA256SUMS" wasm_modules/SHA256SUMS >&2 || true
        rm -rf "$tmp"
        exit 1
    fi
    rm -rf "$tmp"
    echo "wasm_modules/ matches a fresh build of guest/"
}

cmd_test() {
    ensure_venv
    "$PY" -m pip install --quiet -e ".[test,build]"
    check_wasm_reproducible
    "$VENV/bin/ruff" check host tests benchmarks
    "$VENV/bin/ruff" format --check host tests benchmarks
    "$VENV/bin/mypy"
    "$VENV/bin/pytest" "$@"
}

cmd_demo() {
    ensure_venv
    "$PY" -m pip install --quiet -e ".[demo]"
    "$VENV/bin/borda" demo
}

case "${1:-}" in
    wasm) cmd_wasm ;;
    test) shift; cmd_test "$@" ;;
    demo) cmd_demo ;;
    *) echo "usage: ./build.sh demo | test [pytest args] | wasm" >&2; exit 2 ;;
esac
