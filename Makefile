# peft.h — build, test, demo.  `make` builds everything; `make test` runs the suite.
CC      ?= cc
OPT     ?= -O3 -march=native
CFLAGS  ?= $(OPT) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra
EXTRA   ?=
LDLIBS  := -lm -lpthread
BUILD   ?= build
# every target compiles the whole header: build them side by side on every core unless -j was given
ifeq ($(filter -j%,$(MAKEFLAGS)),)
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
endif

TEST_SRC := tests/test_main.c tests/harness.c tests/test_ops.c tests/test_llama.c \
            tests/test_files.c tests/test_train.c tests/test_cli.c tests/test_methods.c tests/test_q4.c \
            tests/test_gguf_quant.c \
            tests/test_bf16.c \
            tests/test_chat.c \
            tests/test_adapter_keys.c \
            tests/test_gguf.c \
            tests/test_backend.c \
            tests/test_threads.c \
            tests/test_moe.c \
            tests/test_registry.c \
            tests/test_cli_trial.c
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))

all: $(BUILD)/peft $(BUILD)/demo $(BUILD)/bf16_loss $(BUILD)/test_peft $(EXAMPLES)

$(BUILD)/peft: tools/peft.c tools/peft_tools.h peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -o $@ tools/peft.c $(LDLIBS)

$(BUILD)/demo: tools/demo.c tools/peft_tools.h peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -o $@ tools/demo.c $(LDLIBS)

# make bench's bf16 loss line: the demo's LoRA in fp32 and bf16 over seeds
$(BUILD)/bf16_loss: tools/bf16_loss.c tools/peft_tools.h peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -o $@ tools/bf16_loss.c $(LDLIBS)

# the tests hold the fused loss to 8 MB of logits at a time, so that their
# small vocabularies still take its chunked path (W packed once for all chunks)
$(BUILD)/test_peft: $(TEST_SRC) tests/harness.h peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -DPEFT_LCE_CHUNK_MB=8 -o $@ $(TEST_SRC) $(LDLIBS)

$(BUILD)/examples/%: examples/%.c tools/peft_tools.h peft.h
	@mkdir -p $(BUILD)/examples
	$(CC) $(CFLAGS) $(EXTRA) -o $@ $< $(LDLIBS)

test: $(BUILD)/peft $(BUILD)/demo $(BUILD)/bf16_loss $(BUILD)/test_peft $(EXAMPLES)
	PEFT_BIN=$(BUILD)/peft PEFT_DEMO=$(BUILD)/demo PEFT_EXAMPLES=$(BUILD)/examples $(BUILD)/test_peft

# the main job: a tiny LLaMA pre-trained, then fine-tuned by every method
# (three seeds each, on two cores; nice: it shares the machine politely)
demo: $(BUILD)/demo
	nice $(BUILD)/demo --out demo --threads 2

# the same, then the survey's experiments: LoRA's rank sweep and placement,
# QLoRA against LoRA, zero-init against random-init gates (full.md)
demo-full: $(BUILD)/demo
	nice $(BUILD)/demo --out demo --threads 2 --full

# the speed suite: GEMM vs OpenBLAS and the FMA peak, LoRA steps vs PyTorch + PEFT (where installed)
bench: $(BUILD)/peft $(BUILD)/demo $(BUILD)/bf16_loss
	BIN=$(BUILD)/peft DEMO=$(BUILD)/demo BF16_LOSS=$(BUILD)/bf16_loss tools/bench.sh

# libFuzzer over every reader of untrusted bytes (needs clang with libFuzzer):
# one binary per target, seeds in tests/fuzz/corpus/<target>/ (the tokenizer
# fixtures are added to the inputs target's seeds), new inputs kept in
# $(BUILD)/fuzz-out/<target>/. FUZZ_RUN bounds each target: CI passes a
# number of executions (-runs=N), the default is 2 minutes of fuzzing each.
FUZZ_TARGETS := files inputs adapter q4 sharded model data checkpoint config gguf
FUZZ_RUN     ?= -max_total_time=120
FUZZ_CFLAGS  := -g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_ID_adapter := 1
FUZZ_ID_q4 := 2
FUZZ_ID_sharded := 3
FUZZ_ID_model := 4
FUZZ_ID_data := 5
FUZZ_ID_checkpoint := 6
FUZZ_ID_config := 7
$(BUILD)/fuzz_files: tests/fuzz/fuzz_files.c peft.h
	@mkdir -p $(BUILD)
	clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_files.c -lm -lpthread
$(BUILD)/fuzz_inputs: tests/fuzz/fuzz_inputs.c peft.h
	@mkdir -p $(BUILD)
	clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_inputs.c -lm -lpthread
$(BUILD)/fuzz_gguf: tests/fuzz/fuzz_gguf.c peft.h
	@mkdir -p $(BUILD)
	clang $(FUZZ_CFLAGS) -o $@ tests/fuzz/fuzz_gguf.c -lm -lpthread
$(BUILD)/fuzz_%: tests/fuzz/fuzz_readers.c tests/fuzz/fuzz_common.h peft.h tools/peft.c
	@mkdir -p $(BUILD)
	clang $(FUZZ_CFLAGS) -DFUZZ_TARGET=$(FUZZ_ID_$*) -o $@ tests/fuzz/fuzz_readers.c -lm -lpthread

fuzz: $(FUZZ_TARGETS:%=$(BUILD)/fuzz_%)
	@mkdir -p $(BUILD)/fuzz-out/inputs
	{ printf '\000'; cat tests/fixtures/hf_tok/sp.json; } > $(BUILD)/fuzz-out/inputs/sp
	{ printf '\000'; cat tests/fixtures/hf_tok/llama3.json; } > $(BUILD)/fuzz-out/inputs/l3
	@for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(BUILD)/fuzz-out/$$t; \
	    case $$t in files) len=-max_len=4096;; inputs) len=-max_len=65536;; gguf) len=-max_len=32768;; *) len=;; esac; \
	    log=$(BUILD)/fuzz-out/$$t.log; \
	    $(BUILD)/fuzz_$$t $(BUILD)/fuzz-out/$$t tests/fuzz/corpus/$$t $(FUZZ_RUN) $$len \
	        -artifact_prefix=$(BUILD)/fuzz-out/$$t- > $$log 2>&1 \
	        || { tail -60 $$log; echo "fuzz $$t: FAILED (log: $$log)"; exit 1; }; \
	    echo "fuzz $$t: $$(grep -E '^#[0-9]+' $$log | tail -1)"; \
	done

# allocation-failure sweep (tests/oom_sweep.c) under ASan + UBSan: every N
# by default; OOM_ARGS="STRIDE" samples every STRIDE-th (CI)
OOM_ARGS ?=
SAN := -O1 -g -fno-omit-frame-pointer \
       -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all
$(BUILD)/oom_sweep: tests/oom_sweep.c peft.h
	@mkdir -p $(BUILD)
	$(CC) $(SAN) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra $(EXTRA) -o $@ tests/oom_sweep.c $(LDLIBS)

oom: $(BUILD)/oom_sweep
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(BUILD)/oom_sweep $(OOM_ARGS)

# the optional CUDA backend (issue 20): nvcc and cuBLAS from pinned PyPI wheels
# (tools/cuda_env.sh, cached in $(CUDA_SDK)), or the toolkit at PEFT_CUDA_HOME.
# peft_cuda.cu is the one C++ file (nvcc); everything else stays C (CC) and is
# linked by nvcc. No GPU is needed to build; build/test-cuda skips without one.
# CUDA_ARCH: Hopper (H100/H200) and Ampere machine code, Ampere PTX for the rest.
CUDA_SDK  ?= $(BUILD)/cuda-sdk
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=[sm_80,compute_80]
# CUDA_WERROR: warnings are errors (CI); tools/gpu_check.sh clears it, so that another
# toolkit's or compiler's new warning cannot cost a GPU session its build
CUDA_WERROR ?= -Werror
NVFLAGS   ?= -O3 -std=c++17 --fmad=false $(if $(CUDA_WERROR),-Werror all-warnings) \
             -Xcompiler -Wall,-Wextra$(if $(CUDA_WERROR),$(comma)-Werror)
comma := ,
# CUBLAS_LIB: a folder holding libcublas.so when it is not in the toolkit's
# (tools/gpu_check.sh points it at PyTorch's cuBLAS on a machine with nvcc only)
CUBLAS_INC ?= $(CUDA_ROOT)/include
CUBLAS_LIB ?= $(CUDA_ROOT)/lib64
CUDA_LINK  = -L$(CUBLAS_LIB) -L$(CUDA_ROOT)/lib -L$(CUDA_ROOT)/lib64 -lcublas $(LDLIBS) \
             -Xlinker -rpath=$(CUBLAS_LIB) -Xlinker -rpath=$(CUDA_ROOT)/lib -Xlinker -rpath=$(CUDA_ROOT)/lib64

cuda:
	tools/cuda_env.sh $(CUDA_SDK)
	$(MAKE) --no-print-directory cuda-build CUDA_ROOT="$$(cat $(CUDA_SDK)/root)"

cuda-build: $(BUILD)/peft-cuda $(BUILD)/test-cuda $(BUILD)/test-cuda-ops

$(BUILD)/cuda/peft_cuda.o: peft_cuda.cu peft_cuda.h peft.h
	@mkdir -p $(BUILD)/cuda
	$(CUDA_ROOT)/bin/nvcc -DPEFT_CUDA -I. -I$(CUBLAS_INC) $(NVFLAGS) $(CUDA_ARCH) -c peft_cuda.cu -o $@

$(BUILD)/peft-cuda: tools/peft.c tools/peft_tools.h peft.h peft_cuda.h $(BUILD)/cuda/peft_cuda.o
	@mkdir -p $(BUILD)/cuda
	$(CC) $(CFLAGS) $(CUDA_WERROR) $(EXTRA) -DPEFT_CUDA -c tools/peft.c -o $(BUILD)/cuda/peft.o
	$(CUDA_ROOT)/bin/nvcc -o $@ $(BUILD)/cuda/peft.o $(BUILD)/cuda/peft_cuda.o $(CUDA_LINK)

$(BUILD)/test-cuda: tests/test_cuda.c peft.h peft_cuda.h $(BUILD)/cuda/peft_cuda.o
	@mkdir -p $(BUILD)/cuda
	$(CC) $(CFLAGS) $(CUDA_WERROR) $(EXTRA) -DPEFT_CUDA -c tests/test_cuda.c -o $(BUILD)/cuda/test_cuda.o
	$(CUDA_ROOT)/bin/nvcc -o $@ $(BUILD)/cuda/test_cuda.o $(BUILD)/cuda/peft_cuda.o $(CUDA_LINK)

# the whole suite with the CUDA backend registered beside the CPU one (tests/harness.h,
# PEFT_TEST_CUDA): every fd_run op check and GEMM shape check also runs on the device;
# without one it is the CPU suite with the library's memory through the CUDA heap
$(BUILD)/test-cuda-ops: $(TEST_SRC) tests/harness.h peft.h peft_cuda.h $(BUILD)/cuda/peft_cuda.o
	@mkdir -p $(BUILD)/cuda/ops
	for f in $(TEST_SRC); do \
	    $(CC) $(CFLAGS) $(CUDA_WERROR) $(EXTRA) -DPEFT_CUDA -DPEFT_TEST_CUDA -DPEFT_LCE_CHUNK_MB=8 \
	        -c $$f -o $(BUILD)/cuda/ops/$$(basename $$f .c).o || exit 1; \
	done
	$(CUDA_ROOT)/bin/nvcc -o $@ $(patsubst tests/%.c,$(BUILD)/cuda/ops/%.o,$(TEST_SRC)) \
	    $(BUILD)/cuda/peft_cuda.o $(CUDA_LINK)

# the test sources, for builds outside make (the aarch64 cross build in .ci/run)
print-test-src:
	@echo $(TEST_SRC)

clean:
	rm -rf build build-*

.PHONY: all test demo demo-full bench fuzz oom clean print-test-src cuda cuda-build
