# Two commands do everything on a fresh machine:
#   make run    set up, then the main job (convert check + quick benchmarks + report)
#   make test   set up, then the whole test suite (Python, Triton interpreter, benchmarks in CI
#               mode, CUDA build check, C++ tests, a dry run of the GPU check)
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
JOBS ?= 2
export MAX_JOBS ?= $(JOBS)
# Also read by torch's CMake config, which otherwise probes for a GPU at configure time.
export TORCH_CUDA_ARCH_LIST ?= 9.0

.PHONY: setup run run-full test test-python test-triton test-benchmarks test-cuda-build test-cpp test-gpu-check-dry

setup:
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation -e .
	$(PYTHON) -c "import mnv3_kernels; print('mnv3_kernels', mnv3_kernels.build_info()); print('backends:', mnv3_kernels.backends())"

run: setup
	$(PYTHON) -m benchmarks.run

run-full: setup
	$(PYTHON) -m benchmarks.run --full

test: setup test-python test-triton test-benchmarks test-cuda-build test-cpp test-gpu-check-dry

test-python:
	$(PYTHON) -m pytest -q tests --ignore=tests/test_triton.py

test-triton:
	TRITON_INTERPRET=1 $(PYTHON) -m pytest -q tests/test_triton.py

test-benchmarks:
	MNV3_BENCH_MODE=ci $(PYTHON) -m pytest -q benchmarks --benchmark-disable

# The CUDA kernels cannot run without a GPU; check that they compiled for sm_90 and registered.
test-cuda-build:
	@if [ "$${FORCE_CUDA:-0}" = 1 ] || $(PYTHON) -c "import sys, mnv3_kernels; sys.exit(mnv3_kernels.build_info().get('cuda_built') != 'true')"; \
	then $(PYTHON) .ci/check_cuda_build.py mnv3_kernels/_C*.so; \
	else echo "CUDA kernels not built on this machine: CUDA build check skipped"; fi

# The GPU check script itself, walked stage by stage with the GPU parts skipped.
test-gpu-check-dry:
	GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh

test-cpp:
	mkdir -p build
	cmake -S . -B build/cmake $$($(PYTHON) cmake/torch_cmake_args.py) -DCMAKE_BUILD_TYPE=Release > build/cmake.log
	cmake --build build/cmake -j $(JOBS)
	ctest --test-dir build/cmake --output-on-failure
