/* libFuzzer target for the readers added with training end to end: the
   first byte picks one, the rest is the file.
     0  tokenizer.json (then encodes a mixed string and the input itself)
     1  a .jsonl dataset (Alpaca / prompt-completion / text records)
     2  a checkpoint's trainer.safetensors, loaded into a small LoRA trainer
     3  a llama2.c .bin (legacy or ak42)
     4  llama2.c tokenizer.bin
     make fuzz-inputs   (clang; seeds from tests/fixtures)                     */
#define PEFT_IMPLEMENTATION
#include "../../peft.h"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *write_input(const uint8_t *data, size_t size, const char *ext) {
    static char path[96];
    snprintf(path, sizeof path, "/tmp/peft-fuzz-in-%d%s", (int)getpid(), ext);
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    fwrite(data, 1, size, f);
    fclose(f);
    return path;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int kind = data[0] % 5;
    data++, size--;
    const char *ext[5] = { ".json", ".jsonl", ".safetensors", ".bin", ".tok" };
    const char *path = write_input(data, size, ext[kind]);
    if (!path) return 0;
    peft_tokenizer t;
    if (kind == 0 && peft_tokenizer_load(&t, path, 0) == PEFT_OK) {
        int ids[4096];
        peft_tokenizer_encode(&t, "Hi <|eot_id|> 123 ünï  \n\n x", 1, 1, ids, 4096);
        char *text = malloc(size + 1);
        if (text && size < 1000) {
            memcpy(text, data, size);
            text[size] = 0;
            int n = peft_tokenizer_encode(&t, text, 1, 0, ids, 4096);
            char b[8];
            for (int i = 0; i < n; i++) peft_tokenizer_decode(&t, i ? ids[i - 1] : t.bos_id, ids[i], b);
        }
        free(text);
        peft_tokenizer_free(&t);
    }
    if (kind == 1) {                       /* a toy byte vocabulary */
        peft_tokenizer toy;
        memset(&toy, 0, sizeof toy);
        char *pieces[259];
        float scores[259] = { 0 };
        int sorted[259];
        for (int i = 0; i < 259; i++) {
            pieces[i] = malloc(16);
            if (i < 3) snprintf(pieces[i], 16, "<%d>", i);
            else snprintf(pieces[i], 16, "<0x%02X>", (unsigned)(i - 3) & 0xFFu);
            sorted[i] = i;
        }
        for (int i = 0; i < 259; i++)
            for (int j = 0; j + 1 < 259 - i; j++)
                if (strcmp(pieces[sorted[j]], pieces[sorted[j + 1]]) > 0) { int x = sorted[j]; sorted[j] = sorted[j + 1]; sorted[j + 1] = x; }
        toy.pieces = pieces; toy.scores = scores; toy.n = 259; toy.max_len = 6; toy.sorted = sorted; toy.bos_id = 1; toy.eos_id = 2;
        peft_dataset d, held;
        if (peft_dataset_load(&d, path, &toy, 64) == PEFT_OK) {
            int idx[2] = { 0, d.n - 1 }, tok[128], tgt[128];
            peft_dataset_batch(&d, idx, 2, 64, 0, tok, tgt);
            if (d.n > 2 && peft_dataset_split(&d, &held, 1, 1) == PEFT_OK) peft_dataset_free(&held);
            peft_dataset_free(&d);
        }
        for (int i = 0; i < 259; i++) free(pieces[i]);
    }
    if (kind == 2) {
        peft_config c;
        peft_config_preset(&c, "tiny");
        c.dim = 16; c.hidden_dim = 32; c.n_layers = 2; c.n_heads = 2; c.n_kv_heads = 1; c.head_dim = 8; c.vocab_size = 32;
        peft_model *m;
        if (peft_model_new(&m, &c, 1, 1) == PEFT_OK) {
            peft_method lora = peft_method_defaults(PEFT_LORA);
            peft_attach(m, &lora);
            peft_trainer *tr = peft_trainer_new(m, NULL);
            peft_data_pos pos;
            if (tr) { peft_checkpoint_load(tr, &pos, path); peft_trainer_free(tr); }
            peft_model_free(m);
        }
    }
    if (kind == 3) {
        peft_model *m;
        if (size < (1u << 20) && peft_model_load(&m, path) == PEFT_OK) peft_model_free(m);
    }
    if (kind == 4 && peft_tokenizer_load_llama2c(&t, path, 300) == PEFT_OK) {
        int ids[512];
        peft_tokenizer_encode(&t, "hello world", 1, 0, ids, 512);
        peft_tokenizer_free(&t);
    }
    remove(path);
    return 0;
}
