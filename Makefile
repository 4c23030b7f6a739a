# peft.h — build, test, demo.  `make` builds everything; `make test` runs the suite.
CC      ?= cc
OPT     ?= -O3 -march=native
CFLAGS  ?= $(OPT) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra
EXTRA   ?=
LDLIBS  := -lm -lpthread
BUILD   ?= build

TEST_SRC := tests/test_main.c tests/harness.c tests/test_ops.c tests/test_llama.c \
            tests/test_files.c tests/test_train.c tests/test_cli.c tests/test_methods.c tests/test_q4.c \
            tests/test_gguf_quant.c \
            tests/test_chat.c \
            tests/test_adapter_keys.c \
            tests/test_registry.c \
            tests/test_cli_trial.c \
            tests/test_gguf.c
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))

all: $(BUILD)/peft $(BUILD)/demo $(BUILD)/test_peft $(EXAMPLES)

$(BUILD)/peft: tools/peft.c tools/peft_tools.h peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -o $@ tools/peft.c $(LDLIBS)

$(BUILD)/demo: tools/demo.c tools/peft_tools.h peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -o $@ tools/demo.c $(LDLIBS)

# the tests hold the fused loss to 8 MB of logits at a time, so that their
# small vocabularies still take its chunked path (W packed once for all chunks)
$(BUILD)/test_peft: $(TEST_SRC) tests/harness.h peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -DPEFT_LCE_CHUNK_MB=8 -o $@ $(TEST_SRC) $(LDLIBS)

$(BUILD)/examples/%: examples/%.c tools/peft_tools.h peft.h
	@mkdir -p $(BUILD)/examples
	$(CC) $(CFLAGS) $(EXTRA) -o $@ $< $(LDLIBS)

test: $(BUILD)/peft $(BUILD)/demo $(BUILD)/test_peft $(EXAMPLES)
	PEFT_BIN=$(BUILD)/peft PEFT_DEMO=$(BUILD)/demo PEFT_EXAMPLES=$(BUILD)/examples $(BUILD)/test_peft

# the main job: a tiny LLaMA pre-trained, then fine-tuned by every method
demo: $(BUILD)/demo
	$(BUILD)/demo --out demo

# the speed suite: GEMM vs OpenBLAS and the FMA peak, LoRA steps vs PyTorch + PEFT (where installed)
bench: $(BUILD)/peft
	BIN=$(BUILD)/peft tools/bench.sh

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

# the test sources, for builds outside make (the aarch64 cross build in .ci/run)
print-test-src:
	@echo $(TEST_SRC)

clean:
	rm -rf build build-*

.PHONY: all test demo bench fuzz oom clean print-test-src
