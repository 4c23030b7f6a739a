/* The LLaMA forward and backward against transformers' LlamaForCausalLM
   (fixtures from tools/ref/make_llama_fixtures.py, checked by
   th_check_hf_fixture: logits, loss and every gradient). */
#include "harness.h"

TEST(test_llama_mha_f32) { th_check_hf_fixture("llama_mha", NULL); }
TEST(test_llama_gqa_bf16_llama3_rope) { th_check_hf_fixture("llama_gqa", NULL); }
TEST(test_llama_tied_f16_head_dim) { th_check_hf_fixture("llama_tied", NULL); }

TEST(test_config_fields) {
    peft_config c;
    char p[512];
    snprintf(p, sizeof p, "%s/llama_gqa/config.json", th_fixtures());
    REQUIRE_OK(peft_config_load(&c, p));
    CHECK(c.n_kv_heads == 2 && c.n_heads == 6 && c.head_dim == 8, "gqa heads");
    CHECK(c.rope_type == PEFT_ROPE_LLAMA3 && c.rope_factor == 8 && c.rope_orig_max_pos == 16,
          "llama3 rope scaling");
    CHECK(c.rope_theta == 500000.0f, "rope_theta from rope_parameters: %g", c.rope_theta);
    snprintf(p, sizeof p, "%s/llama_tied/config.json", th_fixtures());
    REQUIRE_OK(peft_config_load(&c, p));
    CHECK(c.tie_embeddings && c.head_dim == 12 && c.n_kv_heads == 1, "tied config");
}

/* An independent count: the per-matrix sum written out, not the library's formula. */
static int64_t count_by_hand(const peft_config *c) {
    int64_t d = c->dim, hd = c->head_dim;
    int64_t attn = d * (c->n_heads * hd) + d * (c->n_kv_heads * hd) * 2 + (c->n_heads * hd) * d;
    int64_t mlp = 3 * d * c->hidden_dim;
    int64_t norms = 2 * d;
    int64_t emb = (int64_t)c->vocab_size * d;
    return emb * (c->tie_embeddings ? 1 : 2) + c->n_layers * (attn + mlp + norms) + d;
}

TEST(test_preset_param_counts) {
    struct { const char *name; int64_t count; } known[] = {
        { "llama-7b", 6738415616LL },      /* LLaMA-1 7B (paper: 6.7B)          */
        { "llama2-7b", 6738415616LL },
        { "llama2-70b", 68976648192LL },
        { "llama3-8b", 8030261248LL },
        { "llama3.2-1b", 1235814400LL },   /* tied, head_dim 64                 */
        { "smollm-135m", 134515008LL },
        { "tinyllama-1.1b", 1100048384LL },
        { "stories15m", 15191712LL },
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        peft_config c;
        REQUIRE_OK(peft_config_preset(&c, known[i].name));
        CHECK(peft_config_param_count(&c) == known[i].count, "%s: %lld, expected %lld", known[i].name,
              (long long)peft_config_param_count(&c), (long long)known[i].count);
    }
    for (int i = 0; peft_preset_name(i); i++) {
        peft_config c;
        REQUIRE_OK(peft_config_preset(&c, peft_preset_name(i)));
        if (c.llama4) continue;   /* MoE: counted against transformers in test_llama4_preset_counts */
        CHECK(peft_config_param_count(&c) == count_by_hand(&c), "%s: formula disagrees", peft_preset_name(i));
    }
    /* instantiated small presets allocate exactly that many */
    const char *small[] = { "stories15m", "tiny" };
    for (int i = 0; i < 2; i++) {
        peft_model *m;
        REQUIRE_OK(peft_model_from_preset(&m, small[i], 0, 0));
        CHECK(peft_model_base_count(m) == peft_config_param_count(&m->cfg), "%s allocated count", small[i]);
        CHECK(peft_model_trainable_count(m) == 0, "a fresh model is frozen");
        peft_model_free(m);
    }
    CHECK(peft_llama_ffn_dim(4096, 256, 0) == 11008, "LLaMA-7B ffn dim");
    CHECK(peft_llama_ffn_dim(8192, 4096, 1.3f) == 28672, "LLaMA-2-70B ffn dim");
    CHECK(peft_llama_ffn_dim(4096, 1024, 1.3f) == 14336, "LLaMA-3-8B ffn dim");
    peft_config c;
    CHECK(peft_config_preset(&c, "llama-9000") == PEFT_ERR_CONFIG && strstr(peft_last_error(), "llama-9000"),
          "unknown preset must be named: %s", peft_last_error());
}

TEST(test_save_load_roundtrip) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/roundtrip", th_tmpdir());
    peft_model *m, *m2;
    REQUIRE_OK(peft_model_from_preset(&m, "tiny", 1, 42));
    REQUIRE_OK(peft_model_save(m, dir));
    REQUIRE_OK(peft_model_load(&m2, dir));
    CHECK(m2->n_params == m->n_params, "param count");
    for (int i = 0; i < m->n_params; i++)
        CHECK(memcmp(m->params[i]->data, m2->params[i]->data, sizeof(float) * m->params[i]->n) == 0,
              "%s differs after save/load", m->params[i]->name);
    peft_model_free(m);
    peft_model_free(m2);
}

TEST(test_threads_deterministic) {
    peft_model *m;
    REQUIRE_OK(peft_model_from_preset(&m, "tiny", 1, 7));
    int tokens[2 * 16];
    for (int i = 0; i < 32; i++) tokens[i] = (i * 37) % 4096;
    float *out[3];
    int threads[3] = { 2, 2, 1 };
    for (int r = 0; r < 3; r++) {
        peft_set_threads(threads[r]);
        peft_graph *g = peft_graph_new();
        peft_tensor *lg = peft_model_forward(m, g, tokens, 2, 16);
        REQUIRE(lg, "forward");
        out[r] = malloc(sizeof(float) * lg->n);
        memcpy(out[r], lg->data, sizeof(float) * lg->n);
        peft_graph_free(g);
    }
    long n = 2 * 16 * 4096;
    CHECK(memcmp(out[0], out[1], sizeof(float) * n) == 0, "2 threads twice: not bit-identical");
    CHECK(th_rel_err_f(out[0], out[2], n) < 1e-5, "2 threads vs 1 thread");
    for (int r = 0; r < 3; r++) free(out[r]);
    peft_set_threads(1);
    peft_model_free(m);
}

/* A real llama2.c checkpoint (../shared/data; skipped where absent): the
   legacy .bin loads with interleaved RoPE and GQA (8 heads, 4 kv heads), and
   greedy decoding from BOS gives llama2.c run.c's 40 tokens. */
TEST(test_llama2c_stories260k) {
    SHARED_OR_SKIP(path, "llama2c/stories260K.bin");
    char ref[700];
    FILE *f;
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, path));
    CHECK(m->cfg.dim == 64 && m->cfg.n_layers == 5 && m->cfg.n_heads == 8 && m->cfg.n_kv_heads == 4 &&
          m->cfg.vocab_size == 512 && m->cfg.rope_interleaved && m->cfg.tie_embeddings, "stories260K config");
    snprintf(ref, sizeof ref, "%s/stories260K_greedy40.txt", th_fixtures());
    int want[40], n = 0;
    f = fopen(ref, "r");
    REQUIRE(f, "%s", ref);
    while (n < 40 && fscanf(f, "%d", &want[n]) == 1) n++;
    fclose(f);
    REQUIRE(n == 40, "fixture has %d ids", n);
    int bos = 1, got[40];
    peft_graph *g = peft_graph_new();
    int k = peft_generate_greedy(m, g, &bos, 1, 40, -1, got);
    CHECK(k == 40 && memcmp(got, want, sizeof want) == 0,
          "greedy continuation differs from run.c (first: %d vs %d)", got[0], want[0]);
    peft_graph_free(g);
    peft_model_free(m);
    /* a truncated copy is refused by name */
    char bad[700];
    snprintf(bad, sizeof bad, "%s/stories_trunc.bin", th_tmpdir());
    REQUIRE(th_truncated_copy(path, bad, 1000), "truncated copy");
    CHECK(peft_model_load(&m, bad) == PEFT_ERR_FORMAT && strstr(peft_last_error(), "stories_trunc.bin"),
          "truncated .bin: %s", peft_last_error());
}

/* The versioned llama2.c files (export.py's version1_export and
   version2_export), written here from stories260K's weights following that
   layout: v1 gives bit-identical logits; v2 (int8 groups of 64, scale =
   max|w|/127, round half to even) loads to exactly q·scale per weight. */
static void put_f32s(FILE *f, const float *x, int64_t n) { fwrite(x, 4, (size_t)n, f); }

TEST(test_llama2c_ak42_versions) {
    SHARED_OR_SKIP(path, "llama2c/stories260K.bin");
    FILE *f;
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, path));
    const peft_config *c = &m->cfg;
    int L = c->n_layers, G = 64;
    const peft_tensor *mats[64];
    int nm = 0;
    mats[nm++] = m->embed;
    int kinds[7] = { PEFT_Q, PEFT_K, PEFT_V, PEFT_O, PEFT_GATE, PEFT_DOWN, PEFT_UP };
    for (int k = 0; k < 7; k++) for (int l = 0; l < L; l++) mats[nm++] = m->layers[l].lin[kinds[k]].w;
    float *deq[64];
    for (int version = 1; version <= 2; version++) {
        char out[700];
        snprintf(out, sizeof out, "%s/stories_v%d.bin", th_tmpdir(), version);
        f = fopen(out, "wb");
        REQUIRE(f, "%s", out);
        uint32_t magic = 0x616b3432;
        int32_t hdr[9] = { 0,          version,       c->dim,        c->hidden_dim, c->n_layers,
                           c->n_heads, c->n_kv_heads, c->vocab_size, c->max_seq_len };
        memcpy(&hdr[0], &magic, 4);
        fwrite(hdr, 4, 9, f);
        unsigned char pad[256] = { 0 };
        pad[0] = 1;                                   /* shared classifier */
        fwrite(pad, 1, 1, f);
        if (version == 2) fwrite(&G, 4, 1, f);
        fwrite(pad + 1, 1, 256 - (size_t)ftell(f), f);
        for (int l = 0; l < L; l++) put_f32s(f, m->layers[l].attn_norm->data, c->dim);
        for (int l = 0; l < L; l++) put_f32s(f, m->layers[l].ffn_norm->data, c->dim);
        put_f32s(f, m->norm->data, c->dim);
        if (version == 1) for (int i = 0; i < nm; i++) put_f32s(f, mats[i]->data, mats[i]->n);
        else {
            float *scales[64];
            for (int i = 0; i < nm; i++) {
                int64_t n = mats[i]->n;
                scales[i] = malloc(sizeof(float) * (size_t)(n / G));
                deq[i] = malloc(sizeof(float) * (size_t)n);
                signed char *q = malloc((size_t)n);
                for (int64_t g = 0; g < n / G; g++) {
                    float mx = 0;
                    for (int k = 0; k < G; k++) mx = fmaxf(mx, fabsf(mats[i]->data[g * G + k]));
                    float s = mx / 127.0f;
                    scales[i][g] = s;
                    for (int k = 0; k < G; k++) {
                        float v = s > 0 ? mats[i]->data[g * G + k] / s : 0;
                        q[g * G + k] = (signed char)nearbyintf(v);
                        deq[i][g * G + k] = (float)q[g * G + k] * s;
                    }
                }
                fwrite(q, 1, (size_t)n, f);
                free(q);
            }
            for (int i = 0; i < nm; i++) { put_f32s(f, scales[i], mats[i]->n / G); free(scales[i]); }
        }
        fclose(f);
        peft_model *v;
        REQUIRE_OK(peft_model_load(&v, out));
        const peft_tensor *vm[64];
        int nv = 0;
        vm[nv++] = v->embed;
        for (int k = 0; k < 7; k++) for (int l = 0; l < L; l++) vm[nv++] = v->layers[l].lin[kinds[k]].w;
        int same = 1;
        for (int i = 0; i < nm; i++)
            same &= !memcmp(vm[i]->data, version == 1 ? mats[i]->data : deq[i],
                            sizeof(float) * (size_t)mats[i]->n);
        for (int l = 0; l < L; l++)
            same &= !memcmp(v->layers[l].attn_norm->data, m->layers[l].attn_norm->data,
                            sizeof(float) * c->dim);
        CHECK(same, "ak42 v%d: weights differ from what was written", version);
        CHECK(v->cfg.rope_interleaved && v->cfg.tie_embeddings && v->cfg.n_kv_heads == 4, "ak42 v%d config",
              version);
        if (version == 2) for (int i = 0; i < nm; i++) free(deq[i]);
        /* truncated by one byte: refused by name */
        REQUIRE(th_truncated_copy(out, out, 1), "truncated copy");
        peft_model *bad;
        CHECK(peft_model_load(&bad, out) == PEFT_ERR_FORMAT && strstr(peft_last_error(), "stories_v"),
              "truncated v%d: %s", version, peft_last_error());
        peft_model_free(v);
    }
    peft_model_free(m);
}
