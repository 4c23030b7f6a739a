# peft.h — build, test, demo.  `make` builds everything; `make test` runs the suite.
CC      ?= cc
OPT     ?= -O3 -march=native
CFLAGS  ?= $(OPT) -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra
EXTRA   ?=
LDLIBS  := -lm -lpthread
BUILD   ?= build

TEST_SRC := tests/test_main.c tests/harness.c tests/test_ops.c tests/test_llama.c \
            tests/test_files.c tests/test_train.c tests/test_cli.c tests/test_methods.c tests/test_q4.c \
            tests/test_gguf_quant.c tests/test_gguf.c
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))

all: $(BUILD)/peft $(BUILD)/demo $(BUILD)/test_peft $(EXAMPLES)

$(BUILD)/peft: tools/peft.c peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -o $@ tools/peft.c $(LDLIBS)

$(BUILD)/demo: tools/demo.c peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -o $@ tools/demo.c $(LDLIBS)

# the tests hold the fused loss to 8 MB of logits at a time, so that their
# small vocabularies still take its chunked path (W packed once for all chunks)
$(BUILD)/test_peft: $(TEST_SRC) tests/harness.h peft.h
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(EXTRA) -DPEFT_LCE_CHUNK_MB=8 -o $@ $(TEST_SRC) $(LDLIBS)

$(BUILD)/examples/%: examples/%.c peft.h
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

# libFuzzer over the file parsers (JSON, safetensors, config.json, GGUF); needs clang
fuzz:
	@mkdir -p $(BUILD) $(BUILD)/fuzz-corpus
	clang -g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -fsanitize=fuzzer,address,undefined -o $(BUILD)/fuzz_files tests/fuzz/fuzz_files.c -lm -lpthread
	cp tests/fixtures/llama_mha/config.json tests/fixtures/clip.safetensors $(BUILD)/fuzz-corpus/
	$(BUILD)/fuzz_files $(BUILD)/fuzz-corpus -max_total_time=60 -max_len=4096
	@mkdir -p $(BUILD)/fuzz-inputs
	clang -g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -fsanitize=fuzzer,address,undefined -o $(BUILD)/fuzz_inputs tests/fuzz/fuzz_inputs.c -lm -lpthread
	{ printf '\000'; cat tests/fixtures/hf_tok/sp.json; } > $(BUILD)/fuzz-inputs/sp
	{ printf '\000'; cat tests/fixtures/hf_tok/llama3.json; } > $(BUILD)/fuzz-inputs/l3
	{ printf '\001'; head -c 2000 tests/fixtures/alpaca/data.json | tr -d '\n[]' | sed 's/}, *{/}\n{/g'; } > $(BUILD)/fuzz-inputs/ds
	$(BUILD)/fuzz_inputs $(BUILD)/fuzz-inputs -max_total_time=60 -max_len=65536
	@mkdir -p $(BUILD)/fuzz-gguf
	clang -g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -fsanitize=fuzzer,address,undefined -o $(BUILD)/fuzz_gguf tests/fuzz/fuzz_gguf.c -lm -lpthread
	cp tests/fuzz/gguf_seeds/* $(BUILD)/fuzz-gguf/
	$(BUILD)/fuzz_gguf $(BUILD)/fuzz-gguf -max_total_time=60 -max_len=32768

clean:
	rm -rf build build-*

.PHONY: all test demo bench fuzz clean
