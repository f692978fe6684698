#!/usr/bin/env bash
# The GPU check: one prepared run on a fresh GPU machine (torch, Triton and nvcc installed,
# nothing built, no network) that fits in 10 minutes and never loses what it measured.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh   # anywhere: every stage walked, GPU parts skipped (CI)
#
# Stages, each with its own time limit (T_TRITON 150, T_BUILD 330, T_CUDA 110, T_BENCH 60,
# T_BIG 60, T_SLOW 90 seconds), all also cut to fit one overall deadline (T_TOTAL, default
# 570 s) while keeping room for the stages after it. The build's critical path is the CUDA
# and AVX-512 kernel files; the Triton stage runs while they compile.
#   0 environment   torch / CUDA / Triton / nvcc / ninja versions; stops here, clearly, when
#                   torch's CUDA major version and nvcc's differ (the build could not work)
#   1 triton        Triton tests (tests/test_triton.py, not slow), autotune limited to one config
#                   (MNV3_TRITON_AUTOTUNE=0); the sm_90 build runs in the background meanwhile
#   2 build         waits for the build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=nproc),
#                   then .ci/check_cuda_build.py on the library
#   3 cuda          GPU tests not marked slow (CUDA kernels, NaN, errors, autograd, opcheck)
#   4 bench         benchmarks/gpu_bench.py: table written row by row, large batches first
#   5 big           tests marked slow with tensors over 2^31 elements (every kernel path)
#   6 slow          the other slow tests (large batches, whole converted models, CUDA graphs)
# Output: $OUT/gpu_check/ when $OUT is set (else benchmarks/results/gpu_<stamp>/): summary.md,
# regenerated after every stage, and every stage's log, junit file and table, written there as
# they are produced. The exit status is 0 only when every stage passed.
set -u
set -o pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
DRY=${GPU_CHECK_DRY:-0}
STAMP=$(date -u +%Y%m%d_%H%M%S)
if [ "$DRY" = 1 ]; then
  DEST=${OUT:-$(mktemp -d)}/gpu_check
elif [ -n "${OUT:-}" ]; then
  DEST="$OUT/gpu_check"
else
  DEST="$ROOT/benchmarks/results/gpu_$STAMP"
fi
mkdir -p "$DEST" || exit 1
SUMMARY="$DEST/summary.md"
PY=${PYTHON:-python}
T0=$(date +%s)
DEADLINE=$(( T0 + ${T_TOTAL:-570} ))
T_TRITON=${T_TRITON:-150}
T_BUILD=${T_BUILD:-330}
T_CUDA=${T_CUDA:-110}
T_BENCH=${T_BENCH:-60}
T_BIG=${T_BIG:-60}
T_SLOW=${T_SLOW:-90}
export MAX_JOBS=${GPU_CHECK_JOBS:-$(nproc)}  # the build's parallel compile jobs
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rfE --durations=5)

# limit WANT RESERVE: WANT seconds, or less so that RESERVE seconds remain before the deadline.
limit() {
  local w=$1 l=$(( DEADLINE - $(date +%s) - $2 ))
  [ "$l" -lt "$w" ] && w=$l
  [ "$w" -lt 10 ] && w=10
  echo "$w"
}
stage() { echo; echo "=== $* (t+$(( $(date +%s) - T0 ))s) ==="; }
declare -A RC NOTE
ORDER=(environment triton build cuda bench big slow)
for s in "${ORDER[@]}"; do RC[$s]="not run"; NOTE[$s]=""; done

# The last pytest summary line of a log ("3 failed, 120 passed in 80.1s").
pytest_line() { grep -E "(passed|failed|error|skipped|deselected|no tests ran)" "$1" 2>/dev/null | grep -E "^=* ?[0-9]+ " | tail -1; }

# Runs pytest; in the dry run only collects (checks the selection and that it is not empty).
run_pytest() {  # name limit args...
  local name=$1 lim=$2; shift 2
  if [ "$DRY" = 1 ]; then
    # Under the interpreter the Triton test module loads without a GPU, so its tests are listed.
    TRITON_INTERPRET=1 "${PYTEST[@]}" --collect-only "$@" > "$DEST/$name.log" 2>&1
    local rc=$? n
    n=$(grep -c "::" "$DEST/$name.log")
    NOTE[$name]="dry run: $n tests collected, none run"
    [ "$rc" -eq 0 ] && [ "$n" -eq 0 ] && rc=5  # an empty selection is a broken stage
    RC[$name]=$rc
    return
  fi
  # SIGINT at the limit: pytest stops, prints its summary and writes the junit file.
  timeout -s INT -k 20 "$lim" "${PYTEST[@]}" --junitxml="$DEST/$name.junit.xml" "$@" > "$DEST/$name.log" 2>&1
  RC[$name]=$?
  [ "${RC[$name]}" -eq 124 ] && NOTE[$name]="stopped at its ${lim}s limit; "
  NOTE[$name]="${NOTE[$name]}$(pytest_line "$DEST/$name.log")"
  tail -8 "$DEST/$name.log"
}

# The summary, rewritten after every stage so that an interrupted check still leaves one.
publish() {
  {
    echo "# GPU check $STAMP$([ "$DRY" = 1 ] && echo ' (dry run: GPU parts skipped)')"
    echo
    echo "- device: ${DEVICE:-unknown}"
    echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(git status --porcelain 2>/dev/null | wc -l) changed files"
    echo "- elapsed: $(( $(date +%s) - T0 ))s of ${T_TOTAL:-570}s"
    echo
    echo "| stage | status | note |"
    echo "|---|---|---|"
    for s in "${ORDER[@]}"; do echo "| $s | ${RC[$s]} | ${NOTE[$s]//|//} |"; done
    echo
    echo "## Environment"
    echo
    echo '```'
    cat "$DEST/environment.log" 2>/dev/null
    echo '```'
    for s in triton cuda big slow; do
      local fails
      fails=$(grep -E "^(FAILED|ERROR) " "$DEST/$s.log" 2>/dev/null | head -40 | cut -c1-300)
      if [ -n "$fails" ]; then printf '\n## Failing tests: %s\n\n```\n%s\n```\n' "$s" "$fails"; fi
    done
    if [ "${RC[build]}" != 0 ] && [ -s "$DEST/build.log" ]; then
      printf '\n## Build log (errors, last lines)\n\n```\n'
      grep -E "error" "$DEST/build.log" | head -20 | cut -c1-300
      tail -15 "$DEST/build.log" | cut -c1-300
      printf '```\n'
    fi
    if [ -s "$DEST/bench.md" ]; then
      printf '\n## Depthwise conv + BN + activation, MobileNetV3-Large layers\n\n'
      cat "$DEST/bench.md"
    fi
  } > "$SUMMARY.tmp" 2>&1
  mv "$SUMMARY.tmp" "$SUMMARY"
}

finish() {
  publish
  echo
  cat "$SUMMARY"
  echo
  echo "results: $DEST"
  local ok=0 s
  for s in "${ORDER[@]}"; do [ "${RC[$s]}" = 0 ] || ok=1; done
  exit "$ok"
}

# Interrupted from outside (Ctrl-C, an outer timeout): stop the build, keep what was measured.
BUILD_PID=""
on_signal() {
  [ -n "$BUILD_PID" ] && kill "$BUILD_PID" 2>/dev/null
  for s in "${ORDER[@]}"; do [ "${RC[$s]}" = "not run" ] && RC[$s]="interrupted"; done
  finish
}
trap on_signal INT TERM

# ---- 0. environment --------------------------------------------------------------------------
stage "environment"
# torch's CUDA version decides which toolkit can build the extension: pick the nvcc that matches.
TORCH_CUDA=$(timeout -k 5 60 "$PY" -c "import torch; print(torch.version.cuda or '')" 2>/dev/null)
nvcc_version() { "$1" --version 2>/dev/null | grep -Eo "release [0-9]+\.[0-9]+" | cut -d' ' -f2; }
if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV); do
    [ -x "$d/bin/nvcc" ] || continue
    [ -z "${CUDA_HOME:-}" ] && export CUDA_HOME="$d"
    if [ "$(nvcc_version "$d/bin/nvcc" | cut -d. -f1)" = "${TORCH_CUDA%%.*}" ]; then export CUDA_HOME="$d"; break; fi
  done
fi
[ -n "${CUDA_HOME:-}" ] && export PATH="$CUDA_HOME/bin:$PATH"
NVCC_CUDA=$(nvcc_version "${CUDA_HOME:-/nonexistent}/bin/nvcc")
{
  echo "date: $(date -u)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
  echo "CUDA_HOME=${CUDA_HOME:-unset}"
  echo "nvcc: $("${CUDA_HOME:-/nonexistent}/bin/nvcc" --version 2>&1 | tail -2 | tr '\n' ' ' || true)"
  echo "ninja: $(ninja --version 2>/dev/null || "$PY" -c 'import ninja; print(ninja.__version__, "(python package)")' 2>/dev/null || echo missing)"
  echo "cores: $(nproc), MAX_JOBS=$MAX_JOBS"
  timeout -k 5 60 "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "triton", "pytest", "pytest_benchmark", "torchvision", "timm"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(name, f"missing ({type(exc).__name__})")
import torch
print("torch.version.cuda", torch.version.cuda, "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", "SMs", p.multi_processor_count,
          "GiB", round(p.total_memory / 2**30, 1), "| devices", torch.cuda.device_count())
EOF
} > "$DEST/environment.log" 2>&1
RC[environment]=$?
cat "$DEST/environment.log"
DEVICE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
HAVE_GPU=0
[ "$DRY" != 1 ] && timeout -k 5 60 "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null && HAVE_GPU=1
CAN_BUILD=1
if [ -z "$NVCC_CUDA" ]; then
  CAN_BUILD=0
  NOTE[environment]="no nvcc found: the CUDA build is skipped"
elif [ -z "$TORCH_CUDA" ]; then
  CAN_BUILD=0
  NOTE[environment]="this torch has no CUDA: the CUDA build is skipped"
elif [ "${TORCH_CUDA%%.*}" != "${NVCC_CUDA%%.*}" ]; then
  RC[environment]=3
  NOTE[environment]="STOP: torch is built for CUDA $TORCH_CUDA but nvcc is $NVCC_CUDA (CUDA_HOME=$CUDA_HOME); install a matching toolkit or set CUDA_HOME"
  echo "${NOTE[environment]}"
  finish
else
  NOTE[environment]="torch CUDA $TORCH_CUDA, nvcc $NVCC_CUDA"
fi
[ "$DRY" != 1 ] && [ "$HAVE_GPU" = 0 ] && NOTE[environment]="${NOTE[environment]}; NO CUDA DEVICE visible to torch"
publish

# ---- 1. Triton tests (the build runs in the background meanwhile) ----------------------------
if [ "$DRY" != 1 ] && [ "$CAN_BUILD" = 1 ]; then
  B0=$(date +%s)
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 \
    timeout -k 10 "$(limit "$T_BUILD" 200)" "$PY" setup.py build_ext --inplace > "$DEST/build.log" 2>&1 &
  BUILD_PID=$!
fi
LIM=$(limit "$T_TRITON" 260)
stage "triton (limit ${LIM}s)"
if [ "$DRY" = 1 ] || [ "$HAVE_GPU" = 1 ]; then
  # The Triton tests need no compiled library (they run before the build is done).
  # (MNV3_REQUIRE_COMPILED=0: the compiled library is still being built; these tests need none.)
  TRITON_INTERPRET=0 MNV3_TRITON_AUTOTUNE=0 MNV3_REQUIRE_COMPILED=0 \
    run_pytest triton "$LIM" -m "not slow" tests/test_triton.py
else
  RC[triton]="skipped"; NOTE[triton]="no CUDA device"
fi
publish

# ---- 2. build --------------------------------------------------------------------------------
stage "build"
if [ -n "$BUILD_PID" ]; then
  wait "$BUILD_PID"
  RC[build]=$?
  NOTE[build]="$(( $(date +%s) - B0 ))s (started with the triton stage)"
  [ "${RC[build]}" = 124 ] && NOTE[build]="${NOTE[build]}; stopped at its limit"
  tail -3 "$DEST/build.log"
  SO=$(ls -t "$ROOT"/mnv3_kernels/_C*.so 2>/dev/null | head -1)
  if [ "${RC[build]}" = 0 ] && [ -n "$SO" ]; then
    timeout -k 5 60 "$PY" .ci/check_cuda_build.py "$SO" > "$DEST/check_cuda_build.log" 2>&1
    RC[build]=$?
    NOTE[build]="${NOTE[build]}; check_cuda_build: $(tail -1 "$DEST/check_cuda_build.log")"
  fi
elif [ "$DRY" = 1 ]; then
  # What the build would run, checked without running it: the tools exist and setup.py loads.
  RC[build]=0
  for tool in timeout "$PY"; do command -v "$tool" > /dev/null || { RC[build]=1; NOTE[build]="missing $tool"; }; done
  [ "${RC[build]}" = 0 ] && { "$PY" setup.py --version > "$DEST/build.log" 2>&1 || RC[build]=$?; }
  [ -f .ci/check_cuda_build.py ] || RC[build]=1
  NOTE[build]="dry run: not built (setup.py --version: $(tail -1 "$DEST/build.log"))${NOTE[build]:+; ${NOTE[build]}}"
else
  RC[build]="skipped"; NOTE[build]="cannot build here (see environment)"
fi
CUDA_OK=0
[ "${RC[build]}" = 0 ] && [ "$HAVE_GPU" = 1 ] && CUDA_OK=1
publish

# ---- 3. CUDA tests (not slow) ----------------------------------------------------------------
LIM=$(limit "$T_CUDA" 170)
stage "cuda tests (limit ${LIM}s)"
if [ "$DRY" = 1 ] || [ "$CUDA_OK" = 1 ]; then
  MNV3_TRITON_AUTOTUNE=0 run_pytest cuda "$LIM" -m "gpu and not slow" tests --ignore=tests/test_triton.py
else
  RC[cuda]="skipped"; NOTE[cuda]="the CUDA build is not usable here"
fi
publish

# ---- 4. benchmark ----------------------------------------------------------------------------
LIM=$(limit "$T_BENCH" 110)
stage "benchmark (limit ${LIM}s)"
if [ "$DRY" = 1 ]; then
  "$PY" benchmarks/gpu_bench.py --dry-run --out "$DEST/bench.md" --json "$DEST/bench.json" > "$DEST/bench.log" 2>&1
  RC[bench]=$?
  grep -q "^| layer |" "$DEST/bench.md" 2>/dev/null || RC[bench]=1
  NOTE[bench]="dry run: $(tail -1 "$DEST/bench.log")"
elif [ "$CUDA_OK" = 1 ]; then
  # SIGINT at the limit: the rows measured so far are already on disk.
  MNV3_TRITON_AUTOTUNE=1 timeout -s INT -k 15 "$LIM" "$PY" benchmarks/gpu_bench.py --budget $(( LIM - 15 )) \
    --out "$DEST/bench.md" --json "$DEST/bench.json" > "$DEST/bench.log" 2>&1
  RC[bench]=$?
  NOTE[bench]="$(tail -1 "$DEST/bench.log")"
  tail -4 "$DEST/bench.log"
else
  RC[bench]="skipped"; NOTE[bench]="the CUDA build is not usable here"
fi
publish

# ---- 5. slow tests: tensors over 2^31 elements first, then the rest ---------------------------
for part in big slow; do
  if [ "$part" = big ]; then LIM=$(limit "$T_BIG" 40); SEL=(-k big); else LIM=$(limit "$T_SLOW" 10); SEL=(-k "not big"); fi
  stage "$part tests (limit ${LIM}s)"
  if [ "$DRY" = 1 ] || [ "$CUDA_OK" = 1 ]; then
    MNV3_TRITON_AUTOTUNE=0 run_pytest "$part" "$LIM" -m "gpu and slow" "${SEL[@]}" tests
  elif [ "$HAVE_GPU" = 1 ]; then
    MNV3_TRITON_AUTOTUNE=0 run_pytest "$part" "$LIM" -m "gpu and slow" "${SEL[@]}" tests/test_triton.py
    NOTE[$part]="Triton only (no usable CUDA build); ${NOTE[$part]}"
  else
    RC[$part]="skipped"; NOTE[$part]="the CUDA build is not usable here"
  fi
  publish
done
finish
