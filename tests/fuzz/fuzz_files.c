/* libFuzzer target for the parsers that read untrusted files: JSON, the
   safetensors header, adapter configs and model configs.
     clang -g -O1 -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_files.c -o build/fuzz_files -lm
     build/fuzz_files -max_total_time=60                                  */
#define PEFT_IMPLEMENTATION
#include "../../peft.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    peft_json *j;
    if (peft_json_parse(&j, (const char *)data, size, "fuzz") == PEFT_OK) peft_json_free(j);
    /* the same bytes as a safetensors file and as a config.json */
    char path[64];
    snprintf(path, sizeof path, "/tmp/peft-fuzz-%d.st", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    peft_safetensors st;
    if (peft_st_open(&st, path) == PEFT_OK) {
        float buf[64];
        for (int i = 0; i < st.n; i++) {
            int64_t n = 1;
            for (int d = 0; d < st.entries[i].ndim; d++) n *= st.entries[i].shape[d];
            if (n <= 64) peft_st_read_f32(&st, &st.entries[i], buf, n);
        }
        peft_st_close(&st);
    }
    peft_config c;
    peft_config_load(&c, path);
    remove(path);
    /* and as an adapter_config.json for a small model */
    char dir[64], cfg[96];
    snprintf(dir, sizeof dir, "/tmp/peft-fuzz-adapter-%d", (int)getpid());
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    mkdir(dir, 0755);
    f = fopen(cfg, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    peft_model *mm;
    peft_config small;
    peft_config_preset(&small, "tiny");
    small.dim = 16; small.hidden_dim = 32; small.n_layers = 2; small.n_heads = 2; small.n_kv_heads = 1;
    small.head_dim = 8; small.vocab_size = 32;
    if (peft_model_new(&mm, &small, 0, 0) == PEFT_OK) {
        peft_adapter_load(mm, dir);
        peft_model_free(mm);
    }
    remove(cfg);
    return 0;
}
