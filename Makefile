# shardtune: build, test, run.
#
#   make            build build/shardtune (and the test binaries)
#   make run        install missing packages, build, run the embedded default job, print its table
#   make test       install missing packages, build, run the whole CPU test suite
#   make test-fuzz  safetensors reader fuzz test under AddressSanitizer+UBSan (part of make test)
#   make test-gpu   GPU tests (on a machine with an NVIDIA GPU; skipped cleanly without one)
#   make deps       install missing Debian/Ubuntu packages (a no-op when all are present)
#   make bench      GPU benchmark: shardtune vs PyTorch + PEFT side by side (analysis/bench.py)
#
# Variables: CUDA=0|1 (default: 1 when nvcc is found), DEBUG=1 (-O0 -g, sanitizers),
# MARCH=<gcc -march> (default x86-64-v3 where the CPU has AVX2+FMA, else x86-64-v2),
# CUDA_ARCHS (default "80 90"), BUILD=<dir> (default build), NP=<ranks for make run>,
# PYTHON_BENCH (python with torch, transformers and peft for make bench; default python3),
# BENCH_ARGS (more analysis/bench.py options, e.g. --configs 7b_lora,13b_lora or --skip-reference).

SHELL := /bin/bash
BUILD ?= build
PYTHON ?= /usr/bin/python3

# ---------------------------------------------------------------- toolchain detection
NVCC ?= $(shell command -v nvcc 2>/dev/null || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc))
ifeq ($(origin CUDA), undefined)
  CUDA := $(if $(NVCC),1,0)
endif
CUDA_HOME ?= $(if $(NVCC),$(patsubst %/bin/nvcc,%,$(NVCC)),/usr/local/cuda)
CUDA_ARCHS ?= 80 90

ifeq ($(origin MARCH), undefined)
  MARCH := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo 2>/dev/null && echo x86-64-v3 || echo x86-64-v2)
endif

MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null) -DOMPI_SKIP_MPICXX=1 -DMPICH_SKIP_MPICXX=1
MPI_LIBS := $(shell mpicc --showme:link 2>/dev/null)
HDF5_CFLAGS := $(shell pkg-config --cflags hdf5-serial 2>/dev/null || echo -I/usr/include/hdf5/serial)
HDF5_LIBS := $(shell pkg-config --libs hdf5-serial 2>/dev/null || echo -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5) -lhdf5_hl
SPM_LIBS := -lsentencepiece -lsentencepiece_train
# Boost.Program_options: the -dev package's unversioned .so, else the runtime's versioned one
# (some images ship the headers and libboost_program_options.so.1.83.0 only).
BOOST_PO_LIBS := $(shell if ls /usr/lib/*/libboost_program_options.so >/dev/null 2>&1; \
                   then echo -lboost_program_options; \
                   else ls /usr/lib/*/libboost_program_options.so.* 2>/dev/null | sort -V | tail -n 1; fi)
# Images with Boost headers but no compiled library: build the library's own sources (matching
# the installed headers' version), e.g. BOOST_PO_SRC=<boost-1.83>/libs/program_options/src.
BOOST_PO_SRC ?=
BOOST_PO_OBJ := $(if $(BOOST_PO_LIBS),,$(if $(BOOST_PO_SRC),$(patsubst $(BOOST_PO_SRC)/%.cpp,$(BUILD)/boost_po/%.o,$(filter-out %/winmain.cpp,$(wildcard $(BOOST_PO_SRC)/*.cpp))),))
ifeq ($(BOOST_PO_LIBS)$(BOOST_PO_OBJ),)
  $(warning Boost.Program_options library not found: run 'make deps' (libboost-program-options-dev) or set BOOST_PO_SRC)
endif

CXX := g++
CXXFLAGS := -std=c++20 -Wall -Wextra -fopenmp -MMD -MP -Isrc -I. $(MPI_CFLAGS) $(HDF5_CFLAGS)
ifeq ($(DEBUG),1)
  CXXFLAGS += -O0 -g -fsanitize=address,undefined -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=address,undefined
else
  CXXFLAGS += -O3 -march=$(MARCH) -mtune=generic -g1
endif
LDLIBS := $(HDF5_LIBS) $(SPM_LIBS) $(BOOST_PO_LIBS) $(MPI_LIBS) -fopenmp -lpthread

ifeq ($(CUDA),1)
  CXXFLAGS += -DSHARDTUNE_CUDA -I$(CUDA_HOME)/include
  NVCCFLAGS := -std=c++20 -O3 -Isrc -I. -DSHARDTUNE_CUDA $(foreach a,$(CUDA_ARCHS),-gencode=arch=compute_$(a),code=sm_$(a)) \
               -Xcompiler -fopenmp,-Wall,-Wextra $(MPI_CFLAGS) $(HDF5_CFLAGS) -MMD -MP
  # cuBLASLt is not linked: cuda/cublaslt_lazy.cpp opens it on the first GEMM (its load-time
  # initialisation would cost every process ~0.35 s of CPU).
  LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lnccl -ldl
endif

# ---------------------------------------------------------------- build prerequisites
# On a machine without the packages, one line that says what to do, before any compiler error
# ("mpi.h: No such file or directory"). Checked once per make, with __has_include (no header is
# compiled); the test binaries also need GoogleTest.
DEPS_HEADERS ?= mpi.h hdf5.h boost/program_options.hpp sentencepiece_processor.h nlohmann/json.hpp
TEST_DEPS_HEADERS ?= gtest/gtest.h
define check_headers
	@missing=$$(for h in $(1); do printf '#if !__has_include(<%s>)\nmissing %s\n#endif\n' $$h $$h; done | \
	  $(CXX) -std=c++20 $(MPI_CFLAGS) $(HDF5_CFLAGS) -E -P -x c++ - 2>/dev/null | sed -n 's/^missing //p' | tr '\n' ' '); \
	command -v mpicc >/dev/null 2>&1 || missing="$$missing(mpicc) "; \
	command -v $(lastword $(CXX)) >/dev/null 2>&1 || missing="$$missing($(lastword $(CXX))) "; \
	if [ -n "$$missing" ]; then \
	  echo "shardtune: cannot build: $${missing}not found: run \`make deps\` (it installs the missing Debian/Ubuntu packages)" >&2; \
	  exit 1; fi
endef
.PHONY: check-deps check-test-deps
check-deps:
	$(call check_headers,$(DEPS_HEADERS))
check-test-deps:
	$(call check_headers,$(DEPS_HEADERS) $(TEST_DEPS_HEADERS))

# ---------------------------------------------------------------- sources
SRC_CPP := $(shell find src -name '*.cpp' ! -name main.cpp | sort)
SRC_CU := $(if $(filter 1,$(CUDA)),$(shell find cuda -name '*.cu' 2>/dev/null | sort),)
# Host-only CUDA-build sources (no kernels): the C++ compiler, not nvcc.
SRC_CU_CPP := $(if $(filter 1,$(CUDA)),$(shell find cuda -name '*.cpp' 2>/dev/null | sort),)
LIB_OBJ := $(SRC_CPP:%.cpp=$(BUILD)/obj/%.o) $(SRC_CU_CPP:%.cpp=$(BUILD)/obj/%.o) $(SRC_CU:%.cu=$(BUILD)/obj/%.cu.o) \
           $(BOOST_PO_OBJ)
LIB := $(BUILD)/libshardtune.a
BIN := $(BUILD)/shardtune

UNIT_SRC := $(sort $(wildcard tests/unit/*.cpp))
MPI_SRC := $(sort $(wildcard tests/mpi/*.cpp))
E2E_SRC := $(sort $(wildcard tests/e2e/*.cpp))
TESTLIB_SRC := $(sort $(wildcard tests/common/*.cpp))
GPU_SRC := $(sort $(wildcard tests/gpu/*.cpp))
# CUDA kernels run on the CPU emulator (tests/emu/cuda_emu.hpp): needs the CUDA headers only.
EMU_SRC := $(if $(filter 1,$(CUDA)),$(sort $(wildcard tests/emu/*.cpp)),)
TESTLIB_OBJ := $(TESTLIB_SRC:%.cpp=$(BUILD)/obj/%.o)
TEST_OBJ := $(UNIT_SRC:%.cpp=$(BUILD)/obj/%.o) $(MPI_SRC:%.cpp=$(BUILD)/obj/%.o) $(E2E_SRC:%.cpp=$(BUILD)/obj/%.o) \
            $(GPU_SRC:%.cpp=$(BUILD)/obj/%.o) $(EMU_SRC:%.cpp=$(BUILD)/obj/%.o) $(TESTLIB_OBJ)
UNIT_BIN := $(BUILD)/tests/unit_tests
MPI_BIN := $(BUILD)/tests/mpi_tests
E2E_BIN := $(BUILD)/tests/e2e_tests
GPU_BIN := $(BUILD)/tests/gpu_tests
EMU_BIN := $(if $(EMU_SRC),$(BUILD)/tests/emu_tests,)
TEST_LIBS := -lgtest -lpthread

# ---------------------------------------------------------------- version (shardtune --version, metrics.h5)
# A generated header, rewritten only when its text changes: a new commit recompiles one file.
SHARDTUNE_VERSION := 0.6.0
comma := ,
space := $(subst ,, )
GIT_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet HEAD -- 2>/dev/null && echo -dirty)
BUILD_FLAGS := cuda=$(CUDA) $(if $(filter 1,$(CUDA)),archs=$(subst $(space),$(comma),$(strip $(CUDA_ARCHS))) nvcc=$(shell $(NVCC) --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p') ,)debug=$(if $(filter 1,$(DEBUG)),1,0) march=$(MARCH) cxx=$(notdir $(lastword $(CXX)))-$(shell $(CXX) -dumpfullversion 2>/dev/null)
VERSION_H := $(BUILD)/gen/shardtune_version.h
$(VERSION_H): FORCE
	@mkdir -p $(dir $@)
	@printf '#define SHARDTUNE_VERSION "%s"\n#define SHARDTUNE_COMMIT "%s"\n#define SHARDTUNE_BUILD_FLAGS "%s"\n' \
	  '$(SHARDTUNE_VERSION)' '$(GIT_COMMIT)' '$(BUILD_FLAGS)' > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
$(BUILD)/obj/src/core/version.o: $(VERSION_H)
$(BUILD)/obj/src/core/version.o: CXXFLAGS += -I$(BUILD)/gen
.PHONY: FORCE
FORCE:

# mpirun flags for tests and the default job: root in containers needs these.
MPIRUN ?= mpirun
MPIRUN_FLAGS ?= --oversubscribe --bind-to none --mca btl self,vader --mca btl_vader_single_copy_mechanism none \
                $(if $(filter 0,$(shell id -u)),--allow-run-as-root,)
export OMPI_MCA_rmaps_base_oversubscribe := 1

.PHONY: all build tests deps run test test-unit test-mpi test-e2e test-python test-fuzz test-emu test-gpu clean bench report
all: build tests
build: $(BIN)
tests: $(UNIT_BIN) $(MPI_BIN) $(E2E_BIN) $(EMU_BIN)

$(LIB_OBJ) $(BUILD)/obj/src/main.o: | check-deps
$(TEST_OBJ): | check-test-deps

$(BUILD)/obj/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

# Test code at -Og (DEBUG=1 keeps -O0): the work it checks runs in the library (-O3), and -O3 on
# the tests' own code (GoogleTest macros, literals) took ~40% more compile time for nothing.
ifneq ($(DEBUG),1)
$(TEST_OBJ): CXXFLAGS += -Og
endif

# NF4 quantization must round every product and sum on its own, as the CUDA kernels do (bit-equal codes).
$(BUILD)/obj/src/quant/nf4.o: CXXFLAGS += -ffp-contract=off
# RoPE frequencies (llama3 scaling) round every f32 operation on its own, as torch does.
$(BUILD)/obj/src/ops/rope.o: CXXFLAGS += -ffp-contract=off
# The pure-bf16 AdamW update rounds every f32 operation as the CUDA kernel does (its stochastic
# rounding then gives the same bits).
$(BUILD)/obj/src/ops/cpu/adamw_bf16_cpu.o: CXXFLAGS += -ffp-contract=off

$(BUILD)/boost_po/%.o: $(BOOST_PO_SRC)/%.cpp
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 -O2 -fPIC -w -DBOOST_PROGRAM_OPTIONS_NO_LIB -c $< -o $@

$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	@echo "ar $@"
	@ar rcs $@ $^

$(BIN): $(BUILD)/obj/src/main.o $(LIB)
	$(CXX) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(UNIT_BIN): $(UNIT_SRC:%.cpp=$(BUILD)/obj/%.o) $(TESTLIB_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $^ -o $@ -lgtest_main $(TEST_LIBS) $(LDLIBS)

$(MPI_BIN): $(MPI_SRC:%.cpp=$(BUILD)/obj/%.o) $(TESTLIB_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $^ -o $@ $(TEST_LIBS) $(LDLIBS)

$(E2E_BIN): $(E2E_SRC:%.cpp=$(BUILD)/obj/%.o) $(TESTLIB_OBJ) $(LIB) | $(BIN)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $(filter-out $(BIN),$^) -o $@ -lgtest_main $(TEST_LIBS) $(LDLIBS)

# The emulator's sources compile CUDA kernel code as host C++: type punning as on the device
# (no strict aliasing), and the kernels' #pragma unroll means nothing to g++.
$(EMU_SRC:%.cpp=$(BUILD)/obj/%.o): CXXFLAGS += -fno-strict-aliasing -Wno-unknown-pragmas

ifneq ($(EMU_BIN),)
$(EMU_BIN): $(EMU_SRC:%.cpp=$(BUILD)/obj/%.o) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $^ -o $@ -lgtest_main $(TEST_LIBS) $(LDLIBS)
endif

$(GPU_BIN): $(GPU_SRC:%.cpp=$(BUILD)/obj/%.o) $(TESTLIB_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) $^ -o $@ -lgtest_main $(TEST_LIBS) $(LDLIBS)

# The safetensors fuzz test under AddressSanitizer + UBSan, in its own build directory: only the
# reader and the core files it needs (no MPI, HDF5 or CUDA), so it adds ~10 small compiles.
FUZZ_BUILD := $(BUILD)/fuzz-asan
FUZZ_SRC := src/io/safetensors.cpp src/core/atomic_file.cpp src/core/tensor.cpp src/core/allocator.cpp \
            src/core/dtype.cpp src/core/error.cpp src/core/profile.cpp src/core/log.cpp src/core/dryrun.cpp src/core/op_trace.cpp \
            tests/common/paths.cpp tests/unit/test_safetensors_fuzz.cpp
FUZZ_OBJ := $(FUZZ_SRC:%.cpp=$(FUZZ_BUILD)/obj/%.o)
FUZZ_BIN := $(FUZZ_BUILD)/safetensors_fuzz
FUZZ_CXXFLAGS := -std=c++20 -Wall -Wextra -fopenmp -MMD -MP -Isrc -I. -O1 -g \
                 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

$(FUZZ_BUILD)/obj/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(FUZZ_CXXFLAGS) -c $< -o $@

$(FUZZ_BIN): $(FUZZ_OBJ)
	$(CXX) -fsanitize=address,undefined $^ -o $@ -lgtest_main -lgtest -lpthread -fopenmp

test-fuzz: $(FUZZ_BIN)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  OMP_NUM_THREADS=1 $(FUZZ_BIN) --gtest_brief=1

# ---------------------------------------------------------------- packages
# Debian/Ubuntu package names; only the missing ones are installed.
DEB_PACKAGES := g++ make pkg-config openmpi-bin libopenmpi-dev libhdf5-dev libboost-program-options-dev \
                libsentencepiece-dev nlohmann-json3-dev libgtest-dev python3 python3-h5py python3-numpy \
                python3-matplotlib
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "make deps: all packages present"; fi

# ---------------------------------------------------------------- running
NP ?= 1
NPROC := $(shell nproc 2>/dev/null || echo 2)
run: deps
	@$(MAKE) --no-print-directory -j$(NPROC) build
	@MPIRUN="$(MPIRUN) $(MPIRUN_FLAGS)" NP=$(NP) PYTHON=$(PYTHON) BIN=$(BIN) jobs/default_run.sh

# Tables and plots of every run under $(RUNS) (e.g. make report RUNS=runs/cpu-repro).
RUNS ?= runs
report:
	$(PYTHON) analysis/report.py $(RUNS)/* --plots $(RUNS)/plots

# The benchmark (issue #3): random-token shards, each inputs/bench deck under mpirun, the
# PyTorch reference of each in its own process, one table (runs/bench/bench.{txt,md,json}).
# PYTHON_BENCH is python3 from PATH: on the GPU host that is the torch environment, while
# PYTHON (Debian's /usr/bin/python3) has no torch.
PYTHON_BENCH ?= python3
BENCH_ARGS ?=
bench: build
	$(PYTHON_BENCH) analysis/bench.py --bin $(BIN) --mpirun "$(MPIRUN) $(MPIRUN_FLAGS)" $(BENCH_ARGS)

# ---------------------------------------------------------------- tests
# One build for everything (the fuzz binary's long sanitizer compiles first, so that none is left
# alone at the end), then the end-to-end suite with the others beside it: its runs leave a core
# idle much of the time (process starts, one-rank runs). Each suite's output comes as one block.
test: deps
	@$(MAKE) --no-print-directory -j$(NPROC) $(FUZZ_BIN) build tests
	@$(MAKE) --no-print-directory -j$(NPROC) --output-sync=target test-e2e test-unit test-fuzz test-mpi test-python test-emu

test-unit: $(UNIT_BIN)
	OMP_NUM_THREADS=2 $(UNIT_BIN) --gtest_brief=1

test-mpi: $(MPI_BIN)
	$(MPIRUN) $(MPIRUN_FLAGS) -np 2 -x OMP_NUM_THREADS=1 $(MPI_BIN) --gtest_brief=1
	$(MPIRUN) $(MPIRUN_FLAGS) -np 4 -x OMP_NUM_THREADS=1 $(MPI_BIN) --gtest_brief=1

test-e2e: $(E2E_BIN) $(BIN)
	SHARDTUNE_BIN=$(abspath $(BIN)) SHARDTUNE_MPIRUN="$(MPIRUN) $(MPIRUN_FLAGS)" PYTHON=$(PYTHON) \
	  OMP_NUM_THREADS=2 $(E2E_BIN) --gtest_brief=1

test-python:
	$(PYTHON) -m unittest discover -s tests/python -p 'test_*.py'

test-emu: $(EMU_BIN)
	$(if $(EMU_BIN),$(EMU_BIN) --gtest_brief=1,@echo "test-emu: skipped (no CUDA headers: CUDA=0)")

test-gpu: $(GPU_BIN)
	$(GPU_BIN) --gtest_brief=1

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)
