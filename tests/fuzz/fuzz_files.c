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
    return 0;
}
