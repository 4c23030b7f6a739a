/* Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/)
   with the library itself, on the tiny model of fuzz_common.h, so the seeds
   are files this build writes and reads. Run from the repository root:
     cc -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -o build/make_seeds tests/fuzz/make_seeds.c -lm -lpthread
     build/make_seeds                                                       */
#define PEFT_IMPLEMENTATION
#include "../../peft.h"
#include "fuzz_common.h"

static const char *C = "tests/fuzz/corpus";

/* out = the files joined by FUZZ_SEP (prefix: an optional leading byte) */
static void join(const char *out, const int *prefix, const char *const *files, int n) {
    FILE *o = fopen(out, "wb");
    if (!o) { fprintf(stderr, "cannot write %s\n", out); exit(1); }
    if (prefix) fputc(*prefix, o);
    for (int i = 0; i < n; i++) {
        if (i) fwrite(FUZZ_SEP, 1, FUZZ_SEP_LEN, o);
        unsigned char *d;
        size_t k;
        if (peft_read_file(files[i], &d, &k) != PEFT_OK) {
            fprintf(stderr, "%s\n", peft_last_error());
            exit(1);
        }
        fwrite(d, 1, k, o);
        free(d);
    }
    fclose(o);
}

static void text(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (!f) exit(1);
    fputs(s, f);
    fclose(f);
}

static void ok(peft_status s) {
    if (s != PEFT_OK) { fprintf(stderr, "make_seeds: %s\n", peft_last_error()); exit(1); }
}

int main(void) {
    char p[256], q[512], r[512], t[512];
    const char *tmp = fuzz_dir();
    const char *targets[] = { "adapter", "q4", "sharded", "model", "data", "checkpoint", "config" };
    for (int i = 0; i < 7; i++) {
        snprintf(p, sizeof p, "%s/%s", C, targets[i]);
        mkdir(C, 0755);
        mkdir(p, 0755);
    }
    peft_config c;
    fuzz_tiny_config(&c);
    peft_model *m;
    /* a whole model folder */
    ok(peft_model_new(&m, &c, 1, 7));
    snprintf(p, sizeof p, "%s/model", tmp);
    ok(peft_model_save(m, p));
    snprintf(q, sizeof q, "%s/config.json", p);
    snprintf(r, sizeof r, "%s/model.safetensors", p);
    const char *mf[2] = { q, r };
    snprintf(t, sizeof t, "%s/model/tiny", C);
    join(t, NULL, mf, 2);
    /* the same weights in two shards with an index */
    {
        peft_st_write_item it[64];
        int n1 = 0, n2 = 0;
        char idx[8192];
        size_t k = (size_t)snprintf(idx, sizeof idx, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
        for (int i = 0; i < m->n_params; i++) {
            peft_tensor *x = m->params[i];
            int second = i >= m->n_params / 2;
            peft_st_write_item *w = &it[second ? 32 + n2++ : n1++];
            w->name = x->name; w->dtype = PEFT_DT_F32; w->ndim = x->ndim; w->data = x->data;
            memcpy(w->shape, x->shape, sizeof w->shape);
            k += (size_t)snprintf(idx + k, sizeof idx - k, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
                                  i ? ", " : "", x->name, second + 1);
        }
        snprintf(idx + k, sizeof idx - k, "}}\n");
        char a[512], b[512], ix[512];
        snprintf(ix, sizeof ix, "%s/index.json", tmp);
        snprintf(a, sizeof a, "%s/s1.safetensors", tmp);
        snprintf(b, sizeof b, "%s/s2.safetensors", tmp);
        text(ix, idx);
        ok(peft_st_write(a, it, n1, NULL, 0));
        ok(peft_st_write(b, it + 32, n2, NULL, 0));
        const char *sf[4] = { q, ix, a, b };
        snprintf(t, sizeof t, "%s/sharded/tiny", C);
        join(t, NULL, sf, 4);
    }
    /* 4-bit folders: NF4 with double quantization, FP4 without */
    for (int k = 0; k < 2; k++) {
        peft_model *mq;
        ok(peft_model_new(&mq, &c, 1, 7));
        ok(peft_model_quantize(mq, k ? PEFT_FP4 : PEFT_NF4, !k));
        snprintf(p, sizeof p, "%s/q4_%d", tmp, k);
        ok(peft_model_save_quantized(mq, p));
        snprintf(q, sizeof q, "%s/config.json", p);
        snprintf(r, sizeof r, "%s/model.safetensors", p);
        const char *qf[2] = { q, r };
        snprintf(t, sizeof t, "%s/q4/%s", C, k ? "fp4" : "nf4_dq");
        join(t, NULL, qf, 2);
        peft_model_free(mq);
    }
    /* adapters: LoRA (all linear, rsLoRA), adapter-v1 (PEFT's gate), adapter-v2, excitor */
    const char *methods[4] = { "lora", "adapter-v1", "adapter-v2", "excitor" };
    for (int k = 0; k < 4; k++) {
        peft_model *ma;
        peft_method_kind kind;
        ok(peft_model_new(&ma, &c, 1, 7));
        ok(peft_method_parse(methods[k], &kind));
        peft_method me = peft_method_defaults(kind);
        if (k == 0) {
            ok(peft_method_set(&me, "lora_targets", "all-linear"));
            ok(peft_method_set(&me, "lora_rslora", "1"));
            me.lora_r = 2;
        }
        if (k == 1) ok(peft_method_set(&me, "adapter_gate", "peft"));
        me.adapter_len = 2; me.adapter_layers = 1;
        me.excitor_len = 2; me.excitor_rank = 2; me.excitor_layers = 1;
        ok(peft_attach(ma, &me));
        snprintf(p, sizeof p, "%s/adapter_%d", tmp, k);
        ok(peft_adapter_save(ma, p));
        snprintf(q, sizeof q, "%s/adapter_config.json", p);
        snprintf(r, sizeof r, "%s/adapter_model.safetensors", p);
        const char *af[2] = { q, r };
        snprintf(t, sizeof t, "%s/adapter/%s", C, methods[k]);
        join(t, NULL, af, 2);
        peft_model_free(ma);
    }
    /* checkpoints: LoRA and full, with fp32, 8-bit and paged AdamW states */
    for (int k = 0; k < 6; k++) {
        int opt = k % 3, full = k / 3;
        peft_model *mc;
        ok(peft_model_new(&mc, &c, 1, 7));
        peft_method me = peft_method_defaults(full ? PEFT_FULL : PEFT_LORA);
        ok(peft_attach(mc, &me));
        peft_trainer_opts o = peft_trainer_defaults();
        o.optim_8bit = opt == 1;
        o.paged_optim = opt == 2;
        peft_trainer *tr = peft_trainer_new(mc, &o);
        if (!tr) ok(PEFT_ERR_NOMEM);
        if (opt) {
            peft_adamw_opts ao = tr->opt.o;
            ao.state8_min_elems = 0;
            ao.paged_min_elems = 0;
            peft_tensor **params;
            int np = peft_model_trainable(mc, &params);
            peft_adamw_free(&tr->opt);
            ok(peft_adamw_init(&tr->opt, params, np, &ao));
            free(params);
        }
        int tok[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, tgt[8] = { 2, 3, 4, 5, 6, 7, 8, 9 };
        float loss;
        ok(peft_trainer_step(tr, tok, tgt, 1, 8, &loss));
        peft_data_pos pos = { 0, 3, 8 };
        snprintf(p, sizeof p, "%s/trainer_%d.safetensors", tmp, k);
        ok(peft_checkpoint_save(tr, &pos, p));
        const char *cf[1] = { p };
        int lead = opt + 3 * full;
        static const char *on[3] = { "fp32", "8bit", "paged" };
        snprintf(t, sizeof t, "%s/checkpoint/%s_%s", C, full ? "full" : "lora", on[opt]);
        join(t, &lead, cf, 1);
        peft_trainer_free(tr);
        peft_model_free(mc);
    }
    peft_model_free(m);
    /* data: Alpaca .json, .jsonl records, .txt, id files */
    static const struct { int kind; const char *name, *body; } D[] = {
        { 0, "alpaca", "[{\"instruction\": \"Add 2 and 3.\", \"input\": \"\", \"output\": \"5\"},\n"
                       " {\"instruction\": \"Reverse\", \"input\": \"abc\", \"output\": \"cba\"}]\n" },
        { 1, "jsonl", "{\"instruction\": \"Hi\", \"input\": \"\", \"output\": \"Hello\"}\n"
                      "{\"prompt\": \"1+1=\", \"completion\": \"2\"}\n"
                      "{\"text\": \"plain text record\"}\n" },
        { 2, "txt", "Once upon a time there was a tiny model.\nIt learned bytes.\n" },
        { 3, "txt_ids", "1 2 3 4 5 6 7 8 9 10 11 12\n" },
        { 5, "ids", "3 4 5 6 7 8\n9 10 11\n" },
    };
    for (size_t k = 0; k < sizeof D / sizeof D[0]; k++) {
        snprintf(p, sizeof p, "%s/d.tmp", tmp);
        text(p, D[k].body);
        const char *df[1] = { p };
        snprintf(t, sizeof t, "%s/data/%s", C, D[k].name);
        join(t, &D[k].kind, df, 1);
    }
    {                                   /* a binary id file: uint16 ids */
        unsigned short ids[16];
        for (int i = 0; i < 16; i++) ids[i] = (unsigned short)(i * 13 % 259);
        snprintf(t, sizeof t, "%s/data/bin_ids", C);
        FILE *f = fopen(t, "wb");
        if (!f) return 1;
        fputc(4, f);
        fwrite(ids, sizeof ids, 1, f);
        fclose(f);
    }
    /* train_config.json as the CLI writes it */
    snprintf(t, sizeof t, "%s/config/lora", C);
    text(t, "{\n  \"model\": \"m\",\n  \"data\": \"d.json\",\n  \"out\": \"run\",\n"
            "  \"method\": \"lora\",\n  \"lora_r\": 8,\n  \"lora_alpha\": 16,\n"
            "  \"lora_targets\": \"q_proj,v_proj\",\n  \"epochs\": 1,\n  \"batch\": 4,\n"
            "  \"seq\": 256,\n  \"lr\": 0.001,\n  \"schedule\": \"cosine\",\n  \"seed\": \"0\",\n"
            "  \"optim\": \"adamw\"\n}\n");
    snprintf(t, sizeof t, "%s/config/excitor", C);
    text(t, "{\"preset\": \"tiny\", \"data\": \"x.txt\", \"method\": \"excitor\", \"excitor_len\": 4,"
            " \"excitor_rank\": 2,"
            " \"max_steps\": 3, \"grad_accum\": 2, \"checkpoint_activations\": true, \"tokenizer\": null}\n");
    snprintf(p, sizeof p, "rm -rf %s", tmp);
    return system(p) != 0;
}
