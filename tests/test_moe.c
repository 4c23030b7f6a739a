/* LLaMA-4 mixture of experts against transformers' Llama4ForCausalLM
   (fixtures from tools/ref/make_llama4_fixtures.py): logits to 1e-4
   relative, loss to 1e-5 relative, every parameter's gradient to 1e-3
   relative, tokens per expert equal to transformers' routing. */
#include "harness.h"
#include <unistd.h>

/* LLaMA-4's part: the model read as LLaMA-4 with every config key used, and
   the tokens per expert of each MoE layer as transformers routed them */
static void llama4_extra(peft_model *m, const char *ref, const char *name) {
    CHECK(m->cfg.llama4 && m->cfg.unused[0] == 0, "%s: not read as LLaMA-4 (unused keys: %s)", name,
          m->cfg.unused);
    int moe_layers = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        if (!m->layers[l].moe.router) continue;
        char key[64];
        snprintf(key, sizeof key, "moe_counts.%d", l);
        float *cnt;
        long nc;
        REQUIRE(th_read_ref(ref, key, &cnt, &nc) && nc == m->cfg.n_experts, "%s: %s missing", name, key);
        for (int e = 0; e < m->cfg.n_experts; e++)
            CHECK(m->layers[l].moe.counts[e] == (int64_t)cnt[e], "%s: layer %d expert %d: %lld tokens, "
                  "transformers %d", name, l, e, (long long)m->layers[l].moe.counts[e], (int)cnt[e]);
        free(cnt);
        moe_layers++;
    }
    CHECK(moe_layers > 0, "%s: no MoE layer", name);
}

TEST(test_llama4_moe_chunked_nope_gqa) { th_check_hf_fixture("llama4_moe", llama4_extra); }
TEST(test_llama4_interleaved_top2_tied) { th_check_hf_fixture("llama4_interleaved", llama4_extra); }

/* Scout and Maverick: the text decoders' parameter counts equal those of
   transformers' Llama4ForConditionalGeneration language model (built on the
   meta device from Llama4TextConfig's defaults: Scout; Maverick with 128
   experts, MoE every 2nd layer): 107,769,861,120 and 400,711,848,960; the
   model cards' 109B and 400B add the vision encoder (455M). Active: 17B. */
TEST(test_llama4_preset_counts) {
    peft_config c;
    REQUIRE_OK(peft_config_preset(&c, "llama4-scout"));
    CHECK(peft_config_param_count(&c) == 107769861120LL, "scout: %lld",
          (long long)peft_config_param_count(&c));
    int64_t act = peft_config_active_count(&c);
    CHECK(act > 16.5e9 && act < 17.5e9, "scout active %lld", (long long)act);
    REQUIRE_OK(peft_config_preset(&c, "llama4-maverick"));
    CHECK(peft_config_param_count(&c) == 400711848960LL, "maverick: %lld",
          (long long)peft_config_param_count(&c));
    act = peft_config_active_count(&c);
    CHECK(act > 16.5e9 && act < 17.5e9, "maverick active %lld", (long long)act);
    /* the count without allocating equals what a model allocates */
    peft_model *m;
    REQUIRE_OK(peft_model_from_preset(&m, "llama4-tiny", 1, 3));
    CHECK(peft_model_base_count(m) == peft_config_param_count(&m->cfg), "tiny: %lld allocated, %lld counted",
          (long long)peft_model_base_count(m), (long long)peft_config_param_count(&m->cfg));
    peft_model_free(m);
    char out[4096];
    int rc = th_run_peft(out, sizeof out, "info --preset llama4-scout");
    CHECK(rc == 0 && strstr(out, "107.8B / 17.2B"), "peft info --preset llama4-scout (%d):\n%s", rc, out);
}

/* a tiny LLaMA-4 saved and loaded back: the same logits, and config.json read
   with no key left over */
TEST(test_llama4_save_load) {
    peft_model *m, *m2;
    REQUIRE_OK(peft_model_from_preset(&m, "llama4-tiny", 1, 5));
    char dir[600];
    snprintf(dir, sizeof dir, "%s/llama4_tiny", th_tmpdir());
    REQUIRE_OK(peft_model_save(m, dir));
    REQUIRE_OK(peft_model_load(&m2, dir));
    CHECK(m2->cfg.unused[0] == 0, "keys not read: %s", m2->cfg.unused);
    int tok[12] = { 1, 5, 9, 200, 4000, 17, 3, 3, 3, 8, 90, 11 };
    peft_graph *g = peft_graph_new(), *g2 = peft_graph_new();
    peft_tensor *a = peft_model_forward(m, g, tok, 2, 6), *b = peft_model_forward(m2, g2, tok, 2, 6);
    REQUIRE(a && b, "forward: %s", peft_last_error());
    CHECK(th_rel_err_f(a->data, b->data, a->n) == 0, "saved and loaded logits differ");
    peft_graph_free(g);
    peft_graph_free(g2);
    peft_model_free(m);
    peft_model_free(m2);
}

/* a copy of the llama4_moe fixture with config.json edited by sed */
static const char *bad_config(const char *name, const char *sed) {
    static char dir[700];
    snprintf(dir, sizeof dir, "%s/%s", th_tmpdir(), name);
    th_sh("mkdir -p '%s' && cp '%s/llama4_moe/model.safetensors' '%s/' && sed '%s' "
          "'%s/llama4_moe/config.json' > "
          "'%s/config.json'",
          dir, th_fixtures(), dir, sed, th_fixtures(), dir);
    return dir;
}
/* a copy of the llama4_moe fixture with one tensor's shape changed (zeros of that shape) */
static const char *bad_tensor(const char *name, const char *tensor, int ndim, const int64_t *shape) {
    static char dir[700];
    char src[600], path[800];
    snprintf(dir, sizeof dir, "%s/%s", th_tmpdir(), name);
    snprintf(src, sizeof src, "%s/llama4_moe", th_fixtures());
    th_sh("mkdir -p '%s' && cp '%s/config.json' '%s/'", dir, src, dir);
    peft_model *m;
    if (peft_model_load(&m, src) != PEFT_OK) return dir;
    peft_st_write_item it[64];
    float *zeros = calloc(1 << 16, sizeof(float));
    int n = 0;
    for (int i = 0; i < m->n_params && n < 64; i++, n++) {
        it[n].name = m->params[i]->name;
        it[n].dtype = PEFT_DT_F32;
        it[n].ndim = m->params[i]->ndim;
        memcpy(it[n].shape, m->params[i]->shape, sizeof it[n].shape);
        it[n].data = m->params[i]->data;
        if (strcmp(it[n].name, tensor)) continue;
        it[n].ndim = ndim;
        memcpy(it[n].shape, shape, sizeof(int64_t) * (size_t)ndim);
        it[n].data = zeros;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    peft_st_write(path, it, n, NULL, 0);
    free(zeros);
    peft_model_free(m);
    return dir;
}
static void expect_load_error(const char *dir, const char *needle1, const char *needle2) {
    peft_model *m = (peft_model *)1;
    peft_status s = peft_model_load(&m, dir);
    CHECK(s != PEFT_OK && m == NULL, "%s loaded", dir);
    CHECK(strstr(peft_last_error(), needle1) && strstr(peft_last_error(), needle2),
          "%s: error '%s' should name "
          "'%s' and '%s'",
          dir, peft_last_error(), needle1, needle2);
}
TEST(test_llama4_bad_input) {
    expect_load_error(bad_config("topk", "s/\"num_experts_per_tok\": 1/\"num_experts_per_tok\": 5/"),
                      "num_experts_per_tok (5) exceeds num_local_experts (4)", "config.json");
    expect_load_error(bad_config("experts0", "s/\"num_local_experts\": 4/\"num_local_experts\": 0/"),
                      "num_local_experts", "config.json");
    expect_load_error(bad_config("moe_layers", "s/^    0,$/    7,/"), "'moe_layers'", "config.json");
    expect_load_error(bad_config("no_rope", "s/\"no_rope_layer_interval\": 3/\"no_rope_layer_interval\": 2/"),
                      "'no_rope_layers'", "config.json");
    expect_load_error(bad_config("chunk", "s/\"attention_chunk_size\": 4/\"attention_chunk_size\": \"4\"/"),
                      "attention_chunk_size", "config.json");
    expect_load_error(bad_config("vlm", "s/\"llama4_text\"/\"llama4\"/"), "Llama4ForConditionalGeneration",
                      "config.json");
    expect_load_error(bad_config("qknorm", "s/\"use_qk_norm\": true/\"use_qk_norm\": 1/"), "use_qk_norm",
                      "config.json");
    /* the experts' and router's tensors checked against config.json before anything is read */
    int64_t gu[3] = { 4, 32, 46 }, dn[3] = { 4, 32, 24 }, rt[2] = { 5, 32 }, gu2[2] = { 128, 48 };
    expect_load_error(bad_tensor("gate_up", "model.layers.1.feed_forward.experts.gate_up_proj", 3, gu),
                      "model.layers.1.feed_forward.experts.gate_up_proj",
                      "[4, 32, 46] but config.json implies "
                      "[4, 32, 48]");
    expect_load_error(bad_tensor("down", "model.layers.0.feed_forward.experts.down_proj", 3, dn),
                      "model.layers.0.feed_forward.experts.down_proj", "[4, 32, 24] but config.json implies "
                      "[4, 24, 32]");
    expect_load_error(bad_tensor("router", "model.layers.2.feed_forward.router.weight", 2, rt),
                      "model.layers.2.feed_forward.router.weight", "[5, 32] but config.json implies [4, 32]");
    expect_load_error(bad_tensor("gate_up2d", "model.layers.2.feed_forward.experts.gate_up_proj", 2, gu2),
                      "gate_up_proj", "[128, 48]");
}

/* LoRA on every MoE site at once, against PEFT 0.21.2 (fixture llama4_moe_lora: q_proj, v_proj,
   the shared expert's gate/up/down as target_modules; the experts' gate_up_proj and down_proj and
   the router's weight as target_parameters; r 2, alpha 3, random lora_B): the same tensor names
   and shapes, logits to 1e-4, loss to 1e-5, every LoRA gradient to 1e-3; the adapter peft.h saves
   has PEFT's names, shapes and target lists. */
TEST(test_llama4_lora_matches_peft) {
    char base[512], ad[600], ref[700], st_path[800];
    snprintf(base, sizeof base, "%s/llama4_moe", th_fixtures());
    snprintf(ad, sizeof ad, "%s/llama4_moe_lora", th_fixtures());
    snprintf(ref, sizeof ref, "%s/ref.safetensors", ad);
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", ad);
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, base));
    peft_method lm = peft_method_defaults(PEFT_LORA);
    REQUIRE_OK(peft_method_set(&lm, "lora_r", "2"));
    REQUIRE_OK(peft_method_set(&lm, "lora_alpha", "3"));
    REQUIRE_OK(peft_method_set(&lm, "lora_targets", "q_proj,v_proj,gate_proj,up_proj,down_proj"));
    REQUIRE_OK(peft_method_set(&lm, "moe_targets", "router,experts"));
    REQUIRE_OK(peft_attach(m, &lm));
    peft_safetensors st;
    REQUIRE_OK(peft_st_open(&st, st_path));
    CHECK(st.n == m->n_extra, "PEFT's adapter has %d tensors, peft.h made %d", (int)st.n, m->n_extra);
    for (int i = 0; i < m->n_extra; i++) {
        peft_tensor *t = m->extra[i];
        const peft_st_entry *e = peft_st_find(&st, t->name);
        REQUIRE(e, "PEFT's adapter has no tensor %s", t->name);
        CHECK(e->ndim == t->ndim && e->shape[0] == t->shape[0] && e->shape[1] == t->shape[1], "%s: shape",
              t->name);
        REQUIRE_OK(peft_st_read_f32(&st, e, t->data, t->n));
    }
    peft_st_close(&st);
    float *tok_f, *lab_f, *logits, *loss;
    long nt, nl, nlog, n1;
    char bref[700];
    snprintf(bref, sizeof bref, "%s/ref.safetensors", base);
    REQUIRE(th_read_ref(bref, "tokens", &tok_f, &nt) && th_read_ref(bref, "labels", &lab_f, &nl) &&
                    th_read_ref(ref, "logits", &logits, &nlog) && th_read_ref(ref, "loss", &loss, &n1),
            "reference missing");
    int B = 2, T = (int)(nt / 2), *tokens = malloc(sizeof(int) * nt), *targets = malloc(sizeof(int) * nt);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = (int)tok_f[b * T + t];
            targets[b * T + t] = t + 1 < T ? (int)lab_f[b * T + t + 1] : -100;
        }
    peft_graph *g = peft_graph_new();
    peft_tensor *lg = peft_model_forward(m, g, tokens, B, T);
    REQUIRE(lg && lg->n == nlog, "forward: %s", peft_last_error());
    double err = th_rel_err_f(lg->data, logits, nlog);
    CHECK(err < 1e-4, "logits with PEFT's adapter: rel err %.3g", err);
    peft_tensor *L = peft_cross_entropy(g, lg, targets);
    REQUIRE(L, "loss");
    CHECK(fabs(L->data[0] - loss[0]) < 1e-5 * fabs(loss[0]), "loss %.7f vs PEFT %.7f", L->data[0], loss[0]);
    REQUIRE_OK(peft_backward(g, L));
    double worst = 0;
    for (int i = 0; i < m->n_extra; i++) {
        char key[400];
        float *gr;
        long ng;
        snprintf(key, sizeof key, "grad.%s", m->extra[i]->name);
        REQUIRE(th_read_ref(ref, key, &gr, &ng) && ng == m->extra[i]->n, "no gradient %s", key);
        double ge = th_rel_err_f(m->extra[i]->grad, gr, ng);
        worst = ge > worst ? ge : worst;
        CHECK(ge < 1e-3, "gradient of %s: rel err %.3g", m->extra[i]->name, ge);
        free(gr);
    }
    printf("      PEFT adapter on every MoE site: logits %.2g, worst LoRA gradient %.2g (relative)\n", err,
           worst);
    /* saved by peft.h: PEFT's names and shapes, and the target lists PEFT needs to load it */
    char out[700], cfgp[800], text[4096] = "";
    snprintf(out, sizeof out, "%s/llama4_lora_saved", th_tmpdir());
    REQUIRE_OK(peft_adapter_save(m, out));
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", out);
    REQUIRE_OK(peft_st_open(&st, st_path));
    CHECK(st.n == m->n_extra, "saved %d tensors", (int)st.n);
    peft_st_close(&st);
    snprintf(cfgp, sizeof cfgp, "%s/adapter_config.json", out);
    FILE *f = fopen(cfgp, "r");
    REQUIRE(f, "no adapter_config.json");
    size_t got = fread(text, 1, sizeof text - 1, f);
    text[got] = 0;
    fclose(f);
    CHECK(strstr(text, "\"target_parameters\": [\"feed_forward.experts.gate_up_proj\", "
                       "\"feed_forward.experts.down_proj\", \"feed_forward.router.weight\"]"),
          "target_parameters missing:\n%s", text);
    /* loading LLaMA-4 adapters is refused by name, not half done */
    CHECK(peft_adapter_load(m, out) == PEFT_ERR_UNSUPPORTED && strstr(peft_last_error(), "LLaMA-4"),
          "load: %s", peft_last_error());
    CHECK(peft_lora_merge(m) == PEFT_ERR_UNSUPPORTED, "merge of expert LoRA must be refused");
    peft_graph_free(g);
    peft_model_free(m);
    free(tok_f); free(lab_f); free(logits); free(loss); free(tokens); free(targets);
}

/* Each placement the survey asks about, on the llama4_moe fixture: LoRA on attention only, on the
   router, on the shared expert, on the routed experts, and the router alone fully tuned. The
   trainable count equals peft_method_param_count's (no allocation) and the formula below; ten
   AdamW steps on one batch lower the loss; the base tensors stay as they were. */
TEST(test_llama4_placements) {
    struct { const char *name, *targets, *moe; int64_t count;
    } P[] = {
            /* 3 layers; r 4; D 32, q 32, kv 16, F 24, E 4 */
            {"attention", "q_proj,k_proj,v_proj,o_proj", "none",
             3 * 4 * ((32 + 32) + 2 * (32 + 16) + (32 + 32))},
            {"router", "none", "router", 3 * 4 * (32 + 4)},
            {"shared expert", "gate_proj,up_proj,down_proj", "none", 3 * 4 * 3 * (32 + 24)},
            {"experts", "none", "experts", 3 * 4 * 4 * ((48 + 32) + (32 + 24))},
            {"router tuned", "none", "router-full", 3 * 4 * 32},
    };
    char dir[512], ref[600];
    snprintf(dir, sizeof dir, "%s/llama4_moe", th_fixtures());
    snprintf(ref, sizeof ref, "%s/ref.safetensors", dir);
    float *tok_f;
    long nt;
    REQUIRE(th_read_ref(ref, "tokens", &tok_f, &nt), "tokens");
    int B = 2, T = (int)(nt / 2), tokens[64], targets[64];
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int)tok_f[i];
        targets[i] = i % T + 1 < T ? (int)tok_f[i + 1] : -100;
    }
    free(tok_f);
    for (size_t p = 0; p < sizeof P / sizeof P[0]; p++) {
        peft_model *m;
        REQUIRE_OK(peft_model_load(&m, dir));
        peft_method lm = peft_method_defaults(PEFT_LORA);
        REQUIRE_OK(peft_method_set(&lm, "lora_r", "4"));
        REQUIRE_OK(peft_method_set(&lm, "lora_targets", P[p].targets));
        REQUIRE_OK(peft_method_set(&lm, "moe_targets", P[p].moe));
        REQUIRE_OK(peft_attach(m, &lm));
        int64_t n = peft_model_trainable_count(m);
        CHECK(n == P[p].count && n == peft_method_param_count(&m->cfg, &lm),
              "%s: %lld trainable, expected %lld "
              "(counted %lld)",
              P[p].name, (long long)n, (long long)P[p].count,
              (long long)peft_method_param_count(&m->cfg, &lm));
        float router0 = m->layers[0].moe.router->data[5], expert0 = m->layers[0].moe.gate_up->data[7];
        peft_trainer_opts o = peft_trainer_defaults();
        o.lr = 1e-2f;
        peft_trainer *tr = peft_trainer_new(m, &o);
        REQUIRE(tr, "trainer: %s", peft_last_error());
        float first = 0, loss = 0;
        for (int s = 0; s < 10; s++) {
            REQUIRE_OK(peft_trainer_step(tr, tokens, targets, B, T, &loss));
            if (s == 0) first = loss;
        }
        CHECK(loss < first - 0.01f, "%s: loss %.4f -> %.4f", P[p].name, first, loss);
        CHECK(m->layers[0].moe.router->data[5] == router0 && m->layers[0].moe.gate_up->data[7] == expert0,
              "%s: a frozen base tensor moved", P[p].name);
        printf("      %-14s %6lld trainable, loss %.4f -> %.4f\n", P[p].name, (long long)n, first, loss);
        /* the trained adapter in PEFT's layout, with its logits, for tools/ref/check_llama4_adapter.py */
        char out[700], lp[800];
        snprintf(out, sizeof out, "%s/llama4_placement_%d", th_tmpdir(), (int)p);
        CHECK_OK(peft_adapter_save(m, out));
        peft_graph *g = peft_graph_new();
        peft_tensor *lg = peft_model_forward(m, g, tokens, B, T);
        snprintf(lp, sizeof lp, "%s/logits.f32", out);
        FILE *f = fopen(lp, "wb");
        if (f && lg) fwrite(lg->data, sizeof(float), (size_t)lg->n, f);
        if (f) fclose(f);
        peft_graph_free(g);
        peft_trainer_free(tr);
        peft_model_free(m);
    }
}

/* what the LLaMA-4 block does not have yet is refused by name, never trained silently */
TEST(test_llama4_refused_methods) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/llama4_moe", th_fixtures());
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, dir));
    peft_method_kind k[4] = { PEFT_ADAPTER_V1, PEFT_ADAPTER_V2, PEFT_EXCITOR, PEFT_QLORA };
    for (int i = 0; i < 4; i++) {
        peft_method pm = peft_method_defaults(k[i]);
        CHECK(peft_attach(m, &pm) == PEFT_ERR_UNSUPPORTED && strstr(peft_last_error(), "LLaMA-4"), "%s: %s",
              peft_method_name(k[i]), peft_last_error());
        CHECK(m->n_extra == 0, "%s left tensors behind", peft_method_name(k[i]));
    }
    CHECK(peft_model_quantize(m, PEFT_NF4, 1) == PEFT_ERR_UNSUPPORTED, "quantize: %s", peft_last_error());
    peft_kv_cache *kc;
    CHECK(peft_kv_cache_new(&kc, m, 1, 8) == PEFT_ERR_UNSUPPORTED && kc == NULL, "kv cache: %s",
          peft_last_error());
    peft_method lm = peft_method_defaults(PEFT_LORA);
    REQUIRE_OK(peft_attach(m, &lm));
    char out[700];
    snprintf(out, sizeof out, "%s/llama4.gguf", th_tmpdir());
    CHECK(peft_adapter_export_gguf(m, out) == PEFT_ERR_UNSUPPORTED, "gguf export: %s", peft_last_error());
    peft_model_free(m);
}

/* the routing trace (peft_moe_site.trace): each token's chosen experts of the last forward, whose
   histogram is the forward's tokens per expert (which check_llama4 holds to transformers' routing);
   nothing is written past trace_cap */
TEST(test_llama4_routing_trace) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/llama4_moe", th_fixtures());
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, dir));
    int B = 2, T = 8, k = m->cfg.top_k, E = m->cfg.n_experts, tokens[16], trace0[64], trace1[64];
    REQUIRE(B * T * k + 1 <= 64 && E <= 16, "fixture too large for this test");
    for (int i = 0; i < B * T; i++) tokens[i] = (7 * i + 3) % m->cfg.vocab_size;
    for (int i = 0; i < 64; i++) {
        trace0[i] = -1;
        trace1[i] = -1;
    }
    m->layers[0].moe.trace = trace0;
    m->layers[0].moe.trace_cap = B * T * k;
    m->layers[1].moe.trace = trace1;
    m->layers[1].moe.trace_cap = 5;
    peft_graph *g = peft_graph_new();
    peft_graph_set_grad(g, 0);
    REQUIRE(peft_model_forward(m, g, tokens, B, T), "forward: %s", peft_last_error());
    int64_t hist[16] = { 0 };
    for (int i = 0; i < B * T * k; i++) {
        CHECK(trace0[i] >= 0 && trace0[i] < E, "trace[%d] = %d", i, trace0[i]);
        if (trace0[i] >= 0 && trace0[i] < E) hist[trace0[i]]++;
    }
    for (int e = 0; e < E; e++)
        CHECK(hist[e] == m->layers[0].moe.counts[e], "expert %d: traced %lld, counted %lld", e,
              (long long)hist[e], (long long)m->layers[0].moe.counts[e]);
    CHECK(trace0[B * T * k] == -1, "written past the tokens");
    CHECK(trace1[4] >= 0 && trace1[5] == -1, "trace_cap 5: [4] %d, [5] %d", trace1[4], trace1[5]);
    peft_graph_free(g);
    peft_model_free(m);
}

/* examples/moe_placement in its quick mode: every placement trains and the table is printed */
TEST(test_example_moe_placement) {
    static char out[1 << 15];
    const char *dir = getenv("PEFT_EXAMPLES");
    if (!dir) dir = "build/examples";
    char exe[1200], cwd[512] = "", cmd[2000];
    if (dir[0] != '/' && !getcwd(cwd, sizeof cwd)) SKIP("no working directory");
    snprintf(exe, sizeof exe, "%s%s%s/moe_placement", cwd, cwd[0] ? "/" : "", dir);
    FILE *probe = fopen(exe, "rb");
    if (!probe) SKIP("examples/moe_placement not built");
    fclose(probe);
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' 2>&1", th_tmpdir(), exe);
    FILE *p = popen(cmd, "r");
    REQUIRE(p, "popen");
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    const char *rows[6] = { "| base (no fine-tuning) |", "| LoRA attention q,v |", "| LoRA router |",
                            "| LoRA shared expert |", "| LoRA routed experts |", "| router fully tuned |" };
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit %d: %s", WIFEXITED(st) ? WEXITSTATUS(st) : -1, out);
    for (int i = 0; i < 6; i++) CHECK(strstr(out, rows[i]), "no row %s in: %s", rows[i], out);
}

/* peft bench on a LLaMA-4 model reports its load balance: tokens per expert summed over the MoE
   layers (a multiple of batch x seq x top-k x MoE layers) and max/mean from those numbers */
TEST(test_llama4_bench_load_balance) {
    static char out[1 << 14];
    char dir[512];
    snprintf(dir, sizeof dir, "%s/llama4_moe", th_fixtures());
    int rc = th_run_peft(out, sizeof out,
                         "bench --model %s --method lora --batch 2 --seq 8 --steps 2 --threads 1", dir);
    REQUIRE(rc == 0, "exit %d: %s", rc, out);
    const char *line = strstr(out, "tokens per expert over ");
    REQUIRE(line, "no load-balance line in: %s", out);
    int n_moe = 0, E = 0;
    long long k[16], sum = 0, mx = 0;
    const char *p = line + strlen("tokens per expert over ");
    REQUIRE(sscanf(p, "%d", &n_moe) == 1 && (p = strchr(p, ':')), "%s", line);
    p++;
    int used;
    while (E < 16 && sscanf(p, " %lld%n", &k[E], &used) == 1) {
        sum += k[E];
        if (k[E] > mx) mx = k[E];
        E++;
        p += used;
    }
    double ratio = 0;
    REQUIRE(sscanf(p, "; max/mean %lf", &ratio) == 1, "%s", line);
    CHECK(n_moe == 3 && E == 4, "%d MoE layers, %d experts: %s", n_moe, E, line);
    CHECK(sum > 0 && sum % (2 * 8 * 3) == 0, "%lld tokens routed: %s", sum, line);
    CHECK(fabs(ratio - (double)mx * E / (double)sum) < 0.006, "max/mean %.2f: %s", ratio, line);
}
