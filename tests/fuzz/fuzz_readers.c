/* libFuzzer targets for the readers of untrusted folders and files, one per
   build: -DFUZZ_TARGET=N picks it (make fuzz builds them all).
     1 adapter     adapter_config.json | adapter_model.safetensors, loaded into
                   the tiny model (fuzz_common.h)
     2 q4          config.json | model.safetensors of a 4-bit (bitsandbytes) folder
     3 sharded     config.json | model.safetensors.index.json | two shards
     4 model       config.json | model.safetensors (a whole model folder)
     5 data        first byte: .json (Alpaca), .jsonl, .txt (with and without
                   a tokenizer), id files (.bin, other); the rest is the file
     6 checkpoint  first byte: optimizer (fp32, 8-bit, paged) and method (LoRA,
                   full); the rest a trainer.safetensors for peft_checkpoint_load
     7 config      train_config.json through the CLI's settings reader
                   (tools/peft.c compiled in), then every value parsed as the
                   CLI parses it
   A folder's files come from one input cut at FUZZ_SEP. Seeds: make_seeds.c
   wrote tests/fuzz/corpus/<target>/. */
#ifndef FUZZ_TARGET
#define FUZZ_TARGET 1
#endif
#if FUZZ_TARGET == 7
#define main peft_cli_main              /* libFuzzer has the main */
#include "../../tools/peft.c"
#undef main
#else
#define PEFT_IMPLEMENTATION
#include "../../peft.h"
#endif
#include "fuzz_common.h"
#include <fcntl.h>

static void toy_tokenizer(peft_tokenizer *t, char **pieces, float *scores, int *sorted);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[256];
    const char *dir = fuzz_dir();
#if FUZZ_TARGET == 1
    const char *names[2] = { "adapter_config.json", "adapter_model.safetensors" };
    fuzz_write_parts(data, size, names, 2);
    peft_config c;
    fuzz_tiny_config(&c);
    peft_model *m;
    if (peft_model_new(&m, &c, 1, 1) != PEFT_OK) return 0;
    if (peft_adapter_load(m, dir) == PEFT_OK) {          /* a loaded adapter must run */
        peft_graph *g = peft_graph_new();
        int tok[4] = { 1, 5, 9, 31 };
        if (g) peft_model_forward(m, g, tok, 1, 4);
        peft_graph_free(g);
    } else if (m->n_extra || m->method.kind != PEFT_FULL) abort();   /* a failed load leaves no trace */
    peft_model_free(m);
#elif FUZZ_TARGET == 2 || FUZZ_TARGET == 3 || FUZZ_TARGET == 4
#if FUZZ_TARGET == 3
    const char *names[4] = { "config.json", "model.safetensors.index.json",
                             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" };
    fuzz_write_parts(data, size, names, 4);
#else
    const char *names[2] = { "config.json", "model.safetensors" };
    fuzz_write_parts(data, size, names, 2);
#endif
    peft_config c;
    /* the weights are read only for models the size of a seed: a config may
       claim any size, and these targets look for bugs, not for memory */
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (peft_config_load(&c, path) == PEFT_OK && peft_config_param_count(&c) < (1 << 20)) {
        peft_model *m;
        if (peft_model_load(&m, dir) == PEFT_OK) {
            peft_graph *g = peft_graph_new();
            int tok[3] = { 0, 1, 2 };
            for (int i = 0; i < 3; i++) tok[i] %= m->cfg.vocab_size;
            if (g) peft_model_forward(m, g, tok, 1, 3);
            peft_graph_free(g);
            peft_model_free(m);
        }
    }
#elif FUZZ_TARGET == 5
    if (size < 1) return 0;
    static const char *ext[6] = { ".json", ".jsonl", ".txt", ".txt", ".bin", ".ids" };
    int kind = data[0] % 6;
    snprintf(path, sizeof path, "%s/data%s", dir, ext[kind]);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data + 1, 1, size - 1, f);
    fclose(f);
    static char *pieces[259];
    static float scores[259];
    static int sorted[259];
    static peft_tokenizer toy;
    if (!toy.pieces) toy_tokenizer(&toy, pieces, scores, sorted);   /* made once, kept */
    peft_dataset d, held;
    if (peft_dataset_load(&d, path, kind == 3 ? NULL : &toy, 64) == PEFT_OK) {
        int idx[2] = { 0, d.n - 1 }, tok[128], tgt[128];
        if (d.n > 0) peft_dataset_batch(&d, idx, 2, 64, 0, tok, tgt);
        if (d.n > 2 && peft_dataset_split(&d, &held, 1, 1) == PEFT_OK) peft_dataset_free(&held);
        peft_dataset_free(&d);
    }
    int *ids;
    int64_t n;
    if (peft_tokens_load(path, 259, &ids, &n) == PEFT_OK) free(ids);
    remove(path);
#elif FUZZ_TARGET == 6
    if (size < 1) return 0;
    int opt = data[0] % 3, full = (data[0] / 3) % 2;
    snprintf(path, sizeof path, "%s/trainer.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data + 1, 1, size - 1, f);
    fclose(f);
    peft_config c;
    fuzz_tiny_config(&c);
    peft_model *m;
    if (peft_model_new(&m, &c, 1, 1) != PEFT_OK) return 0;
    peft_method meth = peft_method_defaults(full ? PEFT_FULL : PEFT_LORA);
    peft_trainer_opts o = peft_trainer_defaults();
    o.optim_8bit = opt == 1;
    o.paged_optim = opt == 2;
    peft_trainer *tr = peft_attach(m, &meth) == PEFT_OK ? peft_trainer_new(m, &o) : NULL;
    if (tr && opt) {                    /* every tensor in 8-bit or paged state, as the seeds */
        peft_adamw_opts ao = tr->opt.o;
        ao.state8_min_elems = 0;
        ao.paged_min_elems = 0;
        peft_tensor **params;
        int np = peft_model_trainable(m, &params);
        peft_adamw_free(&tr->opt);
        if (!params || peft_adamw_init(&tr->opt, params, np, &ao) != PEFT_OK)
            memset(&tr->opt, 0, sizeof tr->opt);
        free(params);
    }
    peft_data_pos pos;
    if (tr && peft_checkpoint_load(tr, &pos, path) == PEFT_OK) {
        int tok[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, tgt[8] = { 2, 3, 4, 5, 6, 7, 8, 9 };
        float loss;
        peft_trainer_step(tr, tok, tgt, 1, 8, &loss);    /* the loaded state must be usable */
    }
    peft_trainer_free(tr);
    peft_model_free(m);
#elif FUZZ_TARGET == 7
    snprintf(path, sizeof path, "%s/train_config.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    int saved = dup(2), null = open("/dev/null", O_WRONLY);   /* the reader's messages, not libFuzzer's */
    if (null >= 0) dup2(null, 2);
    settings st = { .n = 0 };
    if (read_settings(&st, path) == 0) {
        int iv;
        float fv;
        method_flags mf = { .method = get(&st, "method") ? get(&st, "method") : "lora" };
        for (int i = 0; i < st.n; i++) {
            parse_int(st.s[i].val, &iv);
            parse_float(st.s[i].val, &fv);
            for (int k = 0; method_key(k) && mf.n < 32; k++)
                if (!strcmp(method_key(k)->key, st.s[i].key)) {
                    mf.keys[mf.n] = method_key(k)->key;
                    mf.vals[mf.n++] = st.s[i].val;
                }
        }
        peft_method meth;
        build_method(&mf, &meth, 0);
        /* written back and read again: the same settings */
        char again[300];
        snprintf(again, sizeof again, "%s/again.json", dir);
        settings st2 = { .n = 0 };
        if (write_settings(&st, again) == 0 && read_settings(&st2, again) == 0 && st2.n != st.n) abort();
    }
    if (saved >= 0) dup2(saved, 2);
    if (saved >= 0) close(saved);
    if (null >= 0) close(null);
#endif
    (void)path;
    (void)dir;
    return 0;
}

/* a byte vocabulary: <0>, <1>, <2>, then <0x00> … <0xFF> */
static void toy_tokenizer(peft_tokenizer *t, char **pieces, float *scores, int *sorted) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < 259; i++) {
        pieces[i] = malloc(16);
        if (i < 3) snprintf(pieces[i], 16, "<%d>", i);
        else snprintf(pieces[i], 16, "<0x%02X>", (unsigned)(i - 3) & 0xFFu);
        scores[i] = 0.0f;
        sorted[i] = i;
    }
    for (int i = 0; i < 259; i++)
        for (int j = 0; j + 1 < 259 - i; j++)
            if (strcmp(pieces[sorted[j]], pieces[sorted[j + 1]]) > 0) {
                int x = sorted[j];
                sorted[j] = sorted[j + 1];
                sorted[j + 1] = x;
            }
    t->pieces = pieces; t->scores = scores; t->n = 259; t->max_len = 6; t->sorted = sorted;
    t->bos_id = 1; t->eos_id = 2;
}
