#!/usr/bin/env bash
# One prepared GPU check: environment, in-place sm_90 build, GPU tests, a short benchmark, and a
# markdown summary. Run from anywhere:   bash benchmarks/gpu_check.sh
# Works offline. Every stage has its own timeout and exit code; a failing stage never stops the
# summary from being written. Writes benchmarks/results/gpu_<date>.md, and, when $OUT is set,
# $OUT/gpu_summary.md plus the logs under $OUT/gpu_logs/.
# Stage limits (seconds): build 240, tests 120, bench 90, each also cut to fit one overall
# deadline (T_TOTAL, default 450 s = 7.5 min) with room kept for the stages after it.
set -u
set -o pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
STAMP=$(date -u +%Y%m%d_%H%M%S)
RESULTS="$ROOT/benchmarks/results"
LOGS="$RESULTS/gpu_logs_$STAMP"
mkdir -p "$LOGS"
SUMMARY="$RESULTS/gpu_$STAMP.md"
PY=${PYTHON:-python}
T_BUILD=${T_BUILD:-240}
T_TESTS=${T_TESTS:-120}
T_BENCH=${T_BENCH:-90}
DEADLINE=$(( $(date +%s) + ${T_TOTAL:-450} ))
# limit WANT RESERVE: WANT seconds, or less so that RESERVE seconds remain before the deadline.
limit() {
  local l=$(( DEADLINE - $(date +%s) - $2 ))
  local w=$1
  [ "$l" -lt "$w" ] && w=$l
  [ "$w" -lt 5 ] && w=5
  echo "$w"
}

if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda /usr/local/cuda-13.0 $(ls -d /usr/local/cuda-* 2>/dev/null | sort -r); do
    if [ -x "$d/bin/nvcc" ]; then export CUDA_HOME="$d"; break; fi
  done
fi
[ -n "${CUDA_HOME:-}" ] && export PATH="$CUDA_HOME/bin:$PATH"

stage() { echo; echo "=== $* ($(date -u +%H:%M:%S)) ==="; }

# ---- 0. environment --------------------------------------------------------------------------
stage "environment"
{
  nvidia-smi || echo "nvidia-smi failed"
  echo
  echo "CUDA_HOME=${CUDA_HOME:-unset}"
  nvcc --version 2>&1 | tail -2 || echo "nvcc not found"
  timeout -k 5 45 "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "triton", "pytest", "pytest_benchmark", "torchvision", "timm", "numpy"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as exc:
        print(f"{name} missing ({type(exc).__name__})")
import torch
print("torch.version.cuda", torch.version.cuda, "cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "mem GiB", round(p.total_memory / 2**30, 1))
EOF
} > "$LOGS/env.log" 2>&1
ENV_RC=$?
cat "$LOGS/env.log"
DEVICE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)

# ---- 1. build --------------------------------------------------------------------------------
T_BUILD=$(limit "$T_BUILD" 200)
stage "build (limit ${T_BUILD}s)"
B0=$(date +%s)
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} \
  timeout -k 10 "$T_BUILD" "$PY" setup.py build_ext --inplace > "$LOGS/build.log" 2>&1
BUILD_RC=$?
BUILD_S=$(( $(date +%s) - B0 ))
tail -5 "$LOGS/build.log"
echo "build rc=$BUILD_RC in ${BUILD_S}s"
SO=$(ls -t "$ROOT"/mnv3_kernels/_C*.so 2>/dev/null | head -1)
BUILD_INFO=$(timeout -k 5 30 "$PY" -c "import mnv3_kernels, json; print(json.dumps(mnv3_kernels.build_info()))" 2>&1 | tail -1)
echo "build_info: $BUILD_INFO"
CI_RC=-1
if [ -n "$SO" ]; then
  timeout -k 5 30 "$PY" .ci/check_cuda_build.py "$SO" > "$LOGS/check_cuda_build.log" 2>&1
  CI_RC=$?
  tail -3 "$LOGS/check_cuda_build.log"
fi
CUDA_OK=0
if [ "$BUILD_RC" -eq 0 ] && echo "$BUILD_INFO" | grep -q '"cuda_built": "true"'; then CUDA_OK=1; fi

# ---- 2. tests --------------------------------------------------------------------------------
T_TESTS=$(limit "$T_TESTS" 80)
stage "GPU tests (limit ${T_TESTS}s)"
TESTS_RC=-1
if [ "$CUDA_OK" -eq 1 ]; then
  # SIGINT at the limit lets pytest print its summary and write the junit file.
  timeout -s INT -k 15 "$T_TESTS" "$PY" -m pytest -q -m gpu tests/ -p no:cacheprovider \
    -rfE --durations=10 --junitxml="$LOGS/junit.xml" > "$LOGS/tests.log" 2>&1
  TESTS_RC=$?
  tail -15 "$LOGS/tests.log"
else
  echo "skipped: the CUDA build is not usable" | tee "$LOGS/tests.log"
fi
TEST_LINE=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$LOGS/tests.log" | grep -E "^=+ |^[0-9]+ " | tail -1)
[ -z "$TEST_LINE" ] && TEST_LINE=$(tail -1 "$LOGS/tests.log")

# ---- 3. benchmark ----------------------------------------------------------------------------
T_BENCH=$(limit "$T_BENCH" 10)
[ "$T_BENCH" -lt 30 ] && T_BENCH=30
stage "benchmark (limit ${T_BENCH}s)"
BENCH_RC=-1
if [ "$CUDA_OK" -eq 1 ]; then
  timeout -s INT -k 10 "$T_BENCH" "$PY" benchmarks/gpu_bench.py --budget $(( T_BENCH - 20 )) \
    --out "$LOGS/bench.md" --json "$LOGS/bench.json" > "$LOGS/bench.log" 2>&1
  BENCH_RC=$?
  tail -5 "$LOGS/bench.log"
else
  echo "skipped: the CUDA build is not usable" | tee "$LOGS/bench.log"
fi

# ---- 4. summary ------------------------------------------------------------------------------
stage "summary"
{
  echo "# GPU check $STAMP"
  echo
  echo "- device: ${DEVICE:-unknown}"
  echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed files"
  echo "- environment: rc=$ENV_RC; $(grep -E '^(torch|triton|torchvision|timm|pytest_benchmark) ' "$LOGS/env.log" | tr '\n' ';')"
  echo "- build: rc=$BUILD_RC in ${BUILD_S}s (limit ${T_BUILD}s); build_info: \`$BUILD_INFO\`"
  echo "- .ci/check_cuda_build.py: rc=$CI_RC $(tail -1 "$LOGS/check_cuda_build.log" 2>/dev/null)"
  echo "- tests: rc=$TESTS_RC: $TEST_LINE"
  echo "- bench: rc=$BENCH_RC"
  echo
  FAILS=$(grep -E "^(FAILED|ERROR) " "$LOGS/tests.log" 2>/dev/null | head -60)
  if [ -n "$FAILS" ]; then
    echo "## Failing tests (first 60)"
    echo
    echo '```'
    echo "$FAILS" | cut -c1-300
    echo '```'
    echo
  fi
  if [ "$BUILD_RC" -ne 0 ]; then
    echo "## Build errors"
    echo
    echo '```'
    grep -E "error|Error" "$LOGS/build.log" | head -30 | cut -c1-300
    tail -20 "$LOGS/build.log" | cut -c1-300
    echo '```'
    echo
  fi
  echo "## Depthwise conv + BN + activation, MobileNetV3-Large layers"
  echo
  if [ -s "$LOGS/bench.md" ]; then
    cat "$LOGS/bench.md"
  else
    echo "(no table; last lines of the benchmark log)"
    echo
    echo '```'
    tail -40 "$LOGS/bench.log" 2>/dev/null | cut -c1-300
    echo '```'
  fi
} > "$SUMMARY" 2>&1
cat "$SUMMARY"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/gpu_logs"
  cp "$SUMMARY" "$OUT/gpu_summary.md"
  cp -r "$LOGS"/. "$OUT/gpu_logs/" 2>/dev/null
fi
echo
echo "summary: $SUMMARY${OUT:+ and $OUT/gpu_summary.md}"
# The script's status: 0 only when every stage succeeded.
[ "$BUILD_RC" -eq 0 ] && [ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
