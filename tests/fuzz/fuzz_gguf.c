/* libFuzzer target for the GGUF reader: the bytes as a GGUF file, read
   (peft_gguf_open), as a LLaMA configuration, as a model (weights decoded,
   Q/K rows moved) when small, and as a tokenizer.
     clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_gguf.c -o build/fuzz_gguf -lm
     build/fuzz_gguf tests/fuzz/corpus/gguf -max_total_time=60
   The seed (a 2-layer model with a byte-level tokenizer) is written by
   PEFT_WRITE_GGUF_SEED=tests/fuzz/corpus/gguf/tiny.gguf build/test_peft gguf_hostile. */
#define PEFT_IMPLEMENTATION
#include "../../peft.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/peft-fuzz-%d.gguf", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    peft_gguf g;
    if (peft_gguf_open(&g, path) == PEFT_OK) {
        for (int64_t i = 0; i < g.n_kv; i++) {
            int64_t v;
            double d;
            char s[32];
            peft_gguf_int(&g.kv[i], &v);
            peft_gguf_number(&g.kv[i], &d);
            peft_gguf_string(&g.kv[i], s, sizeof s);
        }
        peft_config c;
        /* a model only when its configuration is small: the fuzzer is after the parser */
        int small = peft_gguf_config(&g, &c) == PEFT_OK && c.dim <= 256 && c.hidden_dim <= 1024 &&
                    c.n_layers <= 4 && c.vocab_size <= 4096 && c.n_heads <= 16;
        peft_gguf_close(&g);
        peft_model *m;
        if (small && peft_model_load(&m, path) == PEFT_OK) peft_model_free(m);
    }
    peft_tokenizer t;
    if (peft_tokenizer_load(&t, path, 0) == PEFT_OK) {
        int ids[256];
        peft_tokenizer_encode(&t, "Hello <|im_start|> 123 world!", 1, 1, ids, 256);
        peft_tokenizer_free(&t);
    }
    remove(path);
    return 0;
}
