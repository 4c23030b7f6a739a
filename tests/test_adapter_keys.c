/* adapter_config.json keys against the real PEFT: fixtures from
   tools/ref/make_adapter_key_fixtures.py (regex and list target_modules,
   exclude_modules, layers_to_transform + layers_pattern, rank_pattern,
   alpha_pattern, modules_to_save, lora_bias, trainable_token_indices, keys
   with the adapter name), and every other key refused by name. */
#include "harness.h"

static const struct {
    const char *name, *base;
} ak_cases[] = {
    { "ak_regex", "llama_gqa" },
    { "ak_list_patterns", "llama_gqa" },
    { "ak_exclude_regex_rslora", "llama_gqa" },
    { "ak_layers_int", "llama_gqa" },
    { "ak_modules_to_save", "llama_gqa" },
    { "ak_lora_bias", "llama_gqa" },
    { "ak_tokens", "llama_gqa" },
    { "ak_tokens_tied", "llama_tied" },
    { "ak_default_keys", "llama_gqa" },
};

/* The fixture's tokens (B = 2 rows) and PEFT's logits. */
static int ak_ref(const char *dir, int **tok, int *B, int *T, float **logits, long *nl) {
    char ref[600];
    float *tf;
    long n;
    snprintf(ref, sizeof ref, "%s/ref.safetensors", dir);
    if (!th_read_ref(ref, "tokens", &tf, &n) || !th_read_ref(ref, "logits", logits, nl)) return 0;
    *B = 2;
    *T = (int)(n / 2);
    *tok = malloc(sizeof(int) * n);
    for (long i = 0; i < n; i++) (*tok)[i] = (int)tf[i];
    free(tf);
    return 1;
}

/* "model.layers.L.<mod>.<site>" of every adapted site, sorted as Python sorts. */
static void ak_adapted(const peft_model *m, char *buf, size_t n) {
    char names[64][96];
    int k = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++)
            if (m->layers[l].lin[s].lora_A && k < 64)
                snprintf(names[k++], 96, "model.layers.%d.%s.%s", l, s <= PEFT_O ? "self_attn" : "mlp",
                         peft_site_name(s));
    qsort(names, k, 96, (int (*)(const void *, const void *))strcmp);
    buf[0] = 0;
    for (int i = 0; i < k; i++) {         /* [ "a", "b" ]: appended by hand, sizes checked */
        const char *sep = i ? ", " : "[";
        size_t L = strlen(buf), a = strlen(sep), b = strlen(names[i]);
        if (L + a + b + 4 > n) break;
        memcpy(buf + L, sep, a);
        buf[L + a] = '"';
        memcpy(buf + L + a + 1, names[i], b);
        buf[L + a + 1 + b] = '"';
        buf[L + a + 2 + b] = 0;
    }
    size_t L = strlen(buf);
    snprintf(buf + L, n - L, "]");
}

static peft_tensor *ak_forward(peft_model *m, peft_graph *g, const int *tok, int B, int T) {
    peft_graph_reset(g);
    return peft_model_forward(m, g, tok, B, T);
}

/* Every fixture: PEFT's logits to 1e-5 relative, the same modules adapted, the
   counted parameters allocated; saved by peft.h and loaded again: the same
   logits; merged: the same logits, and unmerged: the base back. */
TEST(test_adapter_keys_match_peft) {
    for (size_t c = 0; c < sizeof ak_cases / sizeof *ak_cases; c++) {
        char base[512], dir[512], ref[600], out[600], adapted[4096];
        snprintf(base, sizeof base, "%s/%s", th_fixtures(), ak_cases[c].base);
        snprintf(dir, sizeof dir, "%s/%s", th_fixtures(), ak_cases[c].name);
        int *tok, B, T;
        float *want;
        long nl;
        REQUIRE(ak_ref(dir, &tok, &B, &T, &want, &nl), "%s: ref", ak_cases[c].name);
        peft_model *m, *m2;
        REQUIRE_OK(peft_model_load(&m, base));
        peft_status st = peft_adapter_load(m, dir);
        CHECK(st == PEFT_OK, "%s: %s", ak_cases[c].name, peft_last_error());
        if (st != PEFT_OK) {
            peft_model_free(m);
            free(tok);
            free(want);
            continue;
        }
        peft_graph *g = peft_graph_new();
        peft_tensor *lg = ak_forward(m, g, tok, B, T);
        REQUIRE(lg && lg->n == nl, "%s: forward %s", ak_cases[c].name, peft_last_error());
        double e = th_rel_err_f(lg->data, want, nl);
        CHECK(e < 1e-5, "%s: logits rel err %.3g vs PEFT", ak_cases[c].name, e);
        /* without gradients (generation's path: the trainable tokens' table is not an op) */
        peft_graph *g0 = peft_graph_new();
        peft_graph_set_grad(g0, 0);
        peft_tensor *l0 = peft_model_forward(m, g0, tok, B, T);
        CHECK(l0 && memcmp(l0->data, lg->data, sizeof(float) * nl) == 0,
              "%s: logits without gradients differ", ak_cases[c].name);
        peft_graph_free(g0);
        /* the loss (labels = the ids, shifted as transformers shifts them) and every gradient */
        int *tgt = malloc(sizeof(int) * B * T);
        for (int i = 0; i < B * T; i++) tgt[i] = i % T + 1 < T ? tok[i + 1] : -100;
        float *loss;
        long n1;
        snprintf(ref, sizeof ref, "%s/ref.safetensors", dir);
        REQUIRE(th_read_ref(ref, "loss", &loss, &n1), "%s: loss", ak_cases[c].name);
        peft_tensor *L = peft_cross_entropy(g, lg, tgt);
        REQUIRE(L, "%s: loss %s", ak_cases[c].name, peft_last_error());
        CHECK(fabs(L->data[0] - loss[0]) < 1e-5 * loss[0], "%s: loss %.7f vs PEFT %.7f", ak_cases[c].name,
              L->data[0], loss[0]);
        REQUIRE_OK(peft_backward(g, L));
        int n_grads = 0;
        for (int i = 0; i < m->n_extra; i++) {
            char key[300];
            float *gr;
            long ng;
            if (!m->extra[i]->requires_grad) continue; /* trainable_tokens_delta: loaded, not trained */
            snprintf(key, sizeof key, "grad.%s", m->extra[i]->name);
            if (!th_read_ref(ref, key, &gr, &ng) || ng != m->extra[i]->n) {
                CHECK(0, "%s: no reference gradient for %s", ak_cases[c].name, key);
                continue;
            }
            double ge = th_rel_err_f(m->extra[i]->grad, gr, ng);
            CHECK(ge < 1e-4, "%s: gradient of %s rel err %.3g", ak_cases[c].name, m->extra[i]->name, ge);
            n_grads++;
            free(gr);
        }
        CHECK(n_grads >= 2, "%s: %d gradients compared", ak_cases[c].name, n_grads);
        free(tgt);
        free(loss);
        /* the adapted modules PEFT reported */
        peft_safetensors rs;
        snprintf(ref, sizeof ref, "%s/ref.safetensors", dir);
        if (strcmp(ak_cases[c].name, "ak_default_keys") != 0 && peft_st_open(&rs, ref) == PEFT_OK) {
            const char *meta = NULL;
            for (int i = 0; i < rs.n_meta; i++)
                if (!strcmp(rs.meta_keys[i], "adapted")) meta = rs.meta_vals[i];
            ak_adapted(m, adapted, sizeof adapted);
            CHECK(meta && !strcmp(meta, adapted), "%s: adapted %s, PEFT %s", ak_cases[c].name, adapted,
                  meta ? meta : "?");
            peft_st_close(&rs);
        }
        CHECK(peft_model_trainable_count(m) == peft_method_param_count(&m->cfg, &m->method),
              "%s: %lld allocated, %lld counted", ak_cases[c].name, (long long)peft_model_trainable_count(m),
              (long long)peft_method_param_count(&m->cfg, &m->method));
        /* saved by peft.h, loaded again */
        snprintf(out, sizeof out, "%s/%s_saved", th_tmpdir(), ak_cases[c].name);
        CHECK_OK(peft_adapter_save(m, out));
        REQUIRE_OK(peft_model_load(&m2, base));
        st = peft_adapter_load(m2, out);
        CHECK(st == PEFT_OK, "%s: reloading peft.h's save: %s", ak_cases[c].name, peft_last_error());
        if (st == PEFT_OK) {
            peft_graph *g2 = peft_graph_new();
            peft_tensor *l2 = ak_forward(m2, g2, tok, B, T);
            CHECK(l2 && memcmp(l2->data, lg->data, sizeof(float) * nl) == 0,
                  "%s: saved and reloaded logits differ", ak_cases[c].name);
            peft_graph_free(g2);
        }
        peft_model_free(m2);
        /* merged */
        float *before = malloc(sizeof(float) * nl), *embed0 = malloc(sizeof(float) * m->embed->n);
        memcpy(before, lg->data, sizeof(float) * nl);
        memcpy(embed0, m->embed->data, sizeof(float) * m->embed->n);
        st = peft_lora_merge(m);
        if (m->method.lora_bias) {
            CHECK(st == PEFT_ERR_UNSUPPORTED && strstr(peft_last_error(), "lora_bias"),
                  "%s: merge without a base bias: %s", ak_cases[c].name, peft_last_error());
        } else {
            CHECK(st == PEFT_OK, "%s: merge: %s", ak_cases[c].name, peft_last_error());
            lg = ak_forward(m, g, tok, B, T);
            e = th_rel_err_f(lg->data, before, nl);
            CHECK(e < 1e-5, "%s: merged logits rel err %.3g", ak_cases[c].name, e);
            CHECK_OK(peft_lora_unmerge(m));
            CHECK(memcmp(embed0, m->embed->data, sizeof(float) * m->embed->n) == 0,
                  "%s: unmerge did not restore embed_tokens", ak_cases[c].name);
            lg = ak_forward(m, g, tok, B, T);
            CHECK(th_rel_err_f(lg->data, before, nl) < 1e-5, "%s: unmerged logits", ak_cases[c].name);
        }
        free(before);
        free(embed0);
        peft_graph_free(g);
        peft_model_free(m);
        free(tok);
        free(want);
    }
}

/* peft.h's list of LlamaForCausalLM's module names is transformers' own. */
TEST(test_adapter_keys_module_names) {
    char path[600];
    snprintf(path, sizeof path, "%s/ak_module_names.json", th_fixtures());
    peft_json *j;
    REQUIRE_OK(peft_json_load(&j, path));
    peft_model *m;
    snprintf(path, sizeof path, "%s/llama_gqa", th_fixtures());
    REQUIRE_OK(peft_model_load(&m, path));
    /* every listed module selected by an exact list entry: only block linears load, the rest
       are refused by name */
    int n = 0;
    for (const peft_json *x = j->child; x; x = x->next, n++) {
        char cfg[600];
        snprintf(cfg, sizeof cfg,
                 "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2, \"target_modules\": [\"%s\"]}",
                 x->string);
        char dir[600];
        snprintf(dir, sizeof dir, "%s/ak_names", th_tmpdir());
        char cmd[1400];
        snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
        REQUIRE(system(cmd) == 0, "mkdir");
        snprintf(cmd, sizeof cmd, "%s/adapter_config.json", dir);
        FILE *f = fopen(cmd, "w");
        fputs(cfg, f);
        fclose(f);
        peft_model *mm;
        REQUIRE_OK(peft_model_load(&mm, path));
        peft_status st = peft_adapter_load(mm, dir);
        const char *last = strrchr(x->string, '.');
        int site = last && strstr(last, "_proj") != NULL;
        if (site)
            CHECK(st == PEFT_ERR_IO || st == PEFT_ERR_FORMAT,
                  "%s: selected, then the missing weights file: %s", x->string, peft_last_error());
        else
            CHECK(st == PEFT_ERR_CONFIG && strstr(peft_last_error(), x->string), "%s: refused by name: %s",
                  x->string, peft_last_error());
        peft_model_free(mm);
    }
    CHECK(n == 3 + 13 * m->cfg.n_layers + 3, "%d module names, peft.h enumerates %d", n,
          3 + 13 * m->cfg.n_layers + 3);
    peft_model_free(m);
    peft_json_free(j);
}

/* A config in a copy of ak_regex's folder with one key set; the load must fail naming the key. */
static void ak_refused(const char *key, const char *value, peft_status want) {
    char dir[600], path[700], cmd[2000], src[600];
    snprintf(dir, sizeof dir, "%s/ak_refused", th_tmpdir());
    snprintf(src, sizeof src, "%s/ak_regex", th_fixtures());
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", dir, src, dir);
    REQUIRE(system(cmd) == 0, "copy");
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "w");
    fprintf(f,
            "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, "
            "\"target_modules\": "
            "\".*layers.[0].self_attn.(q|v)_proj|model\\\\.layers\\\\.1\\\\.mlp\\\\.up_proj\", "
            "\"%s\": %s}",
            key, value);
    fclose(f);
    peft_model *m;
    snprintf(src, sizeof src, "%s/llama_gqa", th_fixtures());
    REQUIRE_OK(peft_model_load(&m, src));
    peft_status st = peft_adapter_load(m, dir);
    CHECK(st == want && strstr(peft_last_error(), key) && strstr(peft_last_error(), "adapter_config.json"),
          "%s = %s: %s (%s)", key, value, peft_status_name(st), peft_last_error());
    peft_model_free(m);
}

TEST(test_adapter_keys_refused_by_name) {
    /* a key PEFT 0.21 does not write */
    ak_refused("use_magic", "true", PEFT_ERR_UNSUPPORTED);
    ak_refused("enable_lora", "[true]", PEFT_ERR_UNSUPPORTED);
    /* PEFT 0.21's keys, set to what peft.h does not do */
    ak_refused("use_dora", "true", PEFT_ERR_UNSUPPORTED);
    ak_refused("fan_in_fan_out", "true", PEFT_ERR_UNSUPPORTED);
    ak_refused("use_qalora", "true", PEFT_ERR_UNSUPPORTED);
    ak_refused("ensure_weight_tying", "true", PEFT_ERR_UNSUPPORTED);
    ak_refused("bias", "\"all\"", PEFT_ERR_UNSUPPORTED);
    ak_refused("init_lora_weights", "\"pissa\"", PEFT_ERR_UNSUPPORTED);
    ak_refused("init_lora_weights", "\"olora\"", PEFT_ERR_UNSUPPORTED);
    ak_refused("loftq_config", "{\"loftq_bits\": 4}", PEFT_ERR_UNSUPPORTED);
    ak_refused("eva_config", "{\"rho\": 2}", PEFT_ERR_UNSUPPORTED);
    ak_refused("layer_replication", "[[0, 1]]", PEFT_ERR_UNSUPPORTED);
    ak_refused("alora_invocation_tokens", "[5]", PEFT_ERR_UNSUPPORTED);
    ak_refused("arrow_config", "{}", PEFT_ERR_UNSUPPORTED);
    ak_refused("corda_config", "{}", PEFT_ERR_UNSUPPORTED);
    ak_refused("kasa_config", "{}", PEFT_ERR_UNSUPPORTED);
    ak_refused("lora_ga_config", "{}", PEFT_ERR_UNSUPPORTED);
    ak_refused("megatron_config", "{}", PEFT_ERR_UNSUPPORTED);
    ak_refused("monteclora_config", "{}", PEFT_ERR_UNSUPPORTED);
    ak_refused("velora_config", "{}", PEFT_ERR_UNSUPPORTED);
    ak_refused("use_bdlora", "{}", PEFT_ERR_UNSUPPORTED);
    ak_refused("target_parameters", "[\"mlp.experts.gate_up_proj\"]", PEFT_ERR_UNSUPPORTED);
    ak_refused("task_type", "\"SEQ_CLS\"", PEFT_ERR_UNSUPPORTED);
    ak_refused("auto_mapping", "{\"base_model_class\": \"GPT2LMHeadModel\"}", PEFT_ERR_UNSUPPORTED);
    ak_refused("modules_to_save", "[\"norm\"]", PEFT_ERR_UNSUPPORTED);
    ak_refused("modules_to_save", "[\"score\"]", PEFT_ERR_CONFIG);
    ak_refused("trainable_token_indices", "{\"lm_head\": [1]}", PEFT_ERR_UNSUPPORTED);
    ak_refused("trainable_token_indices", "[64]", PEFT_ERR_CONFIG);
    ak_refused("trainable_token_indices", "[3, 3]", PEFT_ERR_CONFIG);
    ak_refused("layers_to_transform", "[0]", PEFT_ERR_CONFIG); /* with a regex target_modules, as PEFT */
    ak_refused("rank_pattern", "{\"q_proj\": 0}", PEFT_ERR_CONFIG);
    ak_refused("rank_pattern", "{\"(?=q)\": 2}", PEFT_ERR_UNSUPPORTED); /* lookahead: refused, not guessed */
    ak_refused("exclude_modules", "\"\\\\bq\"", PEFT_ERR_UNSUPPORTED);
    ak_refused("r", "\"4\"", PEFT_ERR_FORMAT);
    ak_refused("qalora_group_size", "0", PEFT_ERR_FORMAT);
    /* target_modules selecting what peft.h cannot adapt, or nothing */
    ak_refused("exclude_modules", "\".*\"", PEFT_ERR_CONFIG);
}

/* The matcher against Python's re.fullmatch (results as Python 3.11 gives them). */
TEST(test_adapter_keys_regex) {
    static const struct {
        const char *pat, *s;
        int want;
    } cases[] = {
        { ".*layers.[01].self_attn.q_proj", "model.layers.0.self_attn.q_proj", 1 },
        { ".*layers.[01].self_attn.q_proj", "model.layers.2.self_attn.q_proj", 0 },
        { ".*layers.[01].self_attn.q_proj", "model.layers.10.self_attn.q_proj", 0 },
        { "model.layers.0.mlp.up_proj", "model.layers.0.mlp.up_proj", 1 },
        { "model.layers.0.mlp.up_proj", "model.layers.0.mlp.up_proj2", 0 },
        { "q_proj", "model.layers.0.self_attn.q_proj", 0 }, /* fullmatch, not search */
        { "(.*\\.)?(q_proj)$", "model.layers.0.self_attn.q_proj", 1 },
        { ".*\\.(q|k|v)_proj", "model.layers.3.self_attn.k_proj", 1 },
        { ".*\\.(q|k|v)_proj", "model.layers.3.self_attn.o_proj", 0 },
        { ".*layers\\.\\d+\\.mlp\\..*", "model.layers.12.mlp.down_proj", 1 },
        { ".*layers\\.\\d+\\.mlp\\..*", "model.layers.x.mlp.down_proj", 0 },
        { "model\\.layers\\.[2-5]\\.self_attn\\.[^o]_proj", "model.layers.4.self_attn.v_proj", 1 },
        { "model\\.layers\\.[2-5]\\.self_attn\\.[^o]_proj", "model.layers.4.self_attn.o_proj", 0 },
        { "model\\.layers\\.[2-5]\\.self_attn\\.[^o]_proj", "model.layers.6.self_attn.v_proj", 0 },
        { "a{2,3}b?", "aaab", 1 },
        { "a{2,3}b?", "ab", 0 },
        { "a{2,3}b?", "aaaa", 0 },
        { "a{2}", "aa", 1 },
        { "(?:ab)+c*?", "ababcc", 1 },
        { "(ab)+", "aba", 0 },
        { "^x$|y", "x", 1 },
        { "^x$|y", "y", 1 },
        { "[\\w.]+_proj", "model.layers.0.mlp.gate_proj", 1 },
        { "\\D+", "ab1", 0 },
        { "a|", "", 1 },
        { "(a*)*b", "aaab", 1 },
        { "a{,3}", "aa", 1 },
        { "a{,3}", "aaaa", 0 },
        { "a{,3}", "", 1 },
        { "a{,}", "a{,}", 0 },
        { "a{}", "a{}", 1 },
        { "(?P<x>ab)+", "abab", 1 },
        { "(?P<x>ab)+", "aba", 0 },
        { "a{1,}b", "aaab", 1 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        CHECK(peft_regex_fullmatch(cases[i].pat, cases[i].s) == cases[i].want,
              "re.fullmatch(%s, %s) should be %d: %s", cases[i].pat, cases[i].s, cases[i].want,
              peft_last_error());
    static const char *refused[] = { "(?=a)", "(?i)q_proj", "\\1",  "a)",     "(a",     "*a",
                                     "a**",   "[a",         "\\bq", "x{2,1}", "(?P=x)", "(?P<>a)" };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        CHECK(peft_regex_fullmatch(refused[i], "a") == -1 && strstr(peft_last_error(), refused[i]),
              "'%s' should be refused: %s", refused[i], peft_last_error());
}

/* GGUF: the per-site ranks and alphas of rank_pattern/alpha_pattern/rsLoRA
   survive llama.cpp's single alpha (lora_b carries the difference); what an
   llama.cpp adapter cannot hold is refused. */
TEST(test_adapter_keys_gguf) {
    static const char *refused[] = { "ak_modules_to_save", "ak_lora_bias", "ak_tokens" };
    static const char *why[] = { "modules_to_save", "lora_bias", "trainable_token_indices" };
    char base[512], dir[512], out[600];
    snprintf(base, sizeof base, "%s/llama_gqa", th_fixtures());
    for (int i = 0; i < 3; i++) {
        peft_model *m;
        REQUIRE_OK(peft_model_load(&m, base));
        snprintf(dir, sizeof dir, "%s/%s", th_fixtures(), refused[i]);
        REQUIRE_OK(peft_adapter_load(m, dir));
        snprintf(out, sizeof out, "%s/%s.gguf", th_tmpdir(), refused[i]);
        CHECK(peft_adapter_export_gguf(m, out) == PEFT_ERR_UNSUPPORTED && strstr(peft_last_error(), why[i]),
              "%s: %s", refused[i], peft_last_error());
        FILE *f = fopen(out, "rb");
        CHECK(!f, "%s: a file was written", out);
        if (f) fclose(f);
        peft_model_free(m);
    }
    /* ak_list_patterns: read the GGUF back and check alpha/r · lora_b · lora_a = s · B · A per site */
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, base));
    snprintf(dir, sizeof dir, "%s/ak_list_patterns", th_fixtures());
    REQUIRE_OK(peft_adapter_load(m, dir));
    snprintf(out, sizeof out, "%s/ak_list_patterns.gguf", th_tmpdir());
    REQUIRE_OK(peft_adapter_export_gguf(m, out));
    FILE *f = fopen(out, "rb");
    REQUIRE(f, "open %s", out);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(size);
    REQUIRE(fread(buf, 1, size, f) == (size_t)size, "read");
    fclose(f);
    /* header: magic, version, n_tensors, n_kv; the kvs written by peft_adapter_export_gguf */
    size_t p = 8;
    uint64_t nt, nkv;
    memcpy(&nt, buf + p, 8);
    memcpy(&nkv, buf + p + 8, 8);
    p += 16;
    float alpha = -1;
    for (uint64_t k = 0; k < nkv; k++) {
        uint64_t kl;
        uint32_t type;
        memcpy(&kl, buf + p, 8);
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)kl, buf + p + 8);
        p += 8 + kl;
        memcpy(&type, buf + p, 4);
        p += 4;
        if (type == 8) {
            uint64_t vl;
            memcpy(&vl, buf + p, 8);
            p += 8 + vl;
        } else {
            if (!strcmp(key, "adapter.lora.alpha")) memcpy(&alpha, buf + p, 4);
            p += 4;
        }
    }
    REQUIRE(alpha > 0, "adapter.lora.alpha");
    struct {
        char name[96];
        uint64_t ne0, ne1, off;
    } ti[64];
    REQUIRE(nt <= 64, "tensor count");
    for (uint64_t k = 0; k < nt; k++) {
        uint64_t nl;
        uint32_t nd, ty;
        memcpy(&nl, buf + p, 8);
        snprintf(ti[k].name, sizeof ti[k].name, "%.*s", (int)nl, buf + p + 8);
        p += 8 + nl;
        memcpy(&nd, buf + p, 4);
        memcpy(&ti[k].ne0, buf + p + 4, 8);
        memcpy(&ti[k].ne1, buf + p + 12, 8);
        memcpy(&ty, buf + p + 20, 4);
        memcpy(&ti[k].off, buf + p + 24, 8);
        p += 32;
    }
    size_t data = (p + 31) / 32 * 32;
    static const char *gg[PEFT_N_SITES] = { "attn_q",   "attn_k", "attn_v",  "attn_output",
                                            "ffn_gate", "ffn_up", "ffn_down" };
    int checked = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++) {
            peft_linear_site *S = &m->layers[l].lin[s];
            if (!S->lora_A || s == PEFT_Q || s == PEFT_K)
                continue; /* q/k rows are RoPE-permuted: compared elsewhere */
            char na[96], nb[96];
            snprintf(na, sizeof na, "blk.%d.%s.weight.lora_a", l, gg[s]);
            snprintf(nb, sizeof nb, "blk.%d.%s.weight.lora_b", l, gg[s]);
            const float *ga = NULL, *gb = NULL;
            for (uint64_t k = 0; k < nt; k++) {
                if (!strcmp(ti[k].name, na)) ga = (const float *)(buf + data + ti[k].off);
                if (!strcmp(ti[k].name, nb)) gb = (const float *)(buf + data + ti[k].off);
            }
            REQUIRE(ga && gb, "%s in the GGUF", na);
            int r = (int)S->lora_A->shape[0];
            CHECK(memcmp(ga, S->lora_A->data, sizeof(float) * S->lora_A->n) == 0, "%s", na);
            double err = 0, mx = 0;
            for (int64_t j = 0; j < S->lora_B->n; j++) {
                double want = S->lora_scale * S->lora_B->data[j], got = alpha / r * gb[j];
                err = fmax(err, fabs(got - want));
                mx = fmax(mx, fabs(want));
            }
            CHECK(err <= 1e-6 * mx, "%s: llama.cpp's alpha/r·lora_b differs from s·B by %.3g (rel)", nb,
                  err / mx);
            checked++;
        }
    CHECK(checked == 3, "%d sites checked", checked);
    free(buf);
    peft_model_free(m);
}

/* peft train --modules-to-save lm_head with targets that are no layers x sites
   grid: the adapter holds the trained lm_head in PEFT's layout, merge puts it
   in the model (same logits), GGUF export refuses it; --lora-bias trains
   lora_B biases. */
TEST(test_adapter_keys_cli_train) {
    static char out[1 << 16];
    FILE *f = fopen("build/peft", "rb");
    if (!f && !getenv("PEFT_BIN")) SKIP("build/peft not built");
    if (f) fclose(f);
    char data[600], adir[600], mdir[600], l1[600], l2[600], gguf[600], path[700];
    snprintf(data, sizeof data, "%s/ak_ids.txt", th_tmpdir());
    f = fopen(data, "w");
    for (int i = 0; i < 400; i++) fprintf(f, "%d ", (i * 7) % 23);
    fclose(f);
    snprintf(adir, sizeof adir, "%s/ak_cli_mts", th_tmpdir());
    snprintf(mdir, sizeof mdir, "%s/ak_cli_merged", th_tmpdir());
    snprintf(l1, sizeof l1, "%s/ak_l1.f32", th_tmpdir());
    snprintf(l2, sizeof l2, "%s/ak_l2.f32", th_tmpdir());
    snprintf(gguf, sizeof gguf, "%s/ak.gguf", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out,
                 "train --model %s/llama_mha --data %s --steps 5 --batch 2 --seq 8 --lr 1e-2 --method lora "
                 "--lora-targets model.layers.0.self_attn.q_proj,model.layers.1.mlp.up_proj "
                 "--modules-to-save lm_head --out %s",
                 th_fixtures(), data, adir) == 0,
          "train: %s", out);
    peft_safetensors st;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", adir);
    REQUIRE_OK(peft_st_open(&st, path));
    const peft_st_entry *e = peft_st_find(&st, "base_model.model.lm_head.weight");
    CHECK(e && st.n == 5, "%d tensors; lm_head copy %s", st.n, e ? "present" : "missing");
    peft_model *m;
    snprintf(path, sizeof path, "%s/llama_mha", th_fixtures());
    REQUIRE_OK(peft_model_load(&m, path));
    if (e) {
        float *w = malloc(sizeof(float) * m->lm_head->n);
        CHECK_OK(peft_st_read_f32(&st, e, w, m->lm_head->n));
        CHECK(th_rel_err_f(w, m->lm_head->data, (long)m->lm_head->n) > 1e-4, "lm_head copy was not trained");
        free(w);
    }
    peft_st_close(&st);
    CHECK_OK(peft_adapter_load(m, adir));
    CHECK(m->layers[0].lin[PEFT_Q].lora_A && !m->layers[1].lin[PEFT_Q].lora_A &&
              m->layers[1].lin[PEFT_UP].lora_A && !m->layers[0].lin[PEFT_UP].lora_A && m->save_head,
          "the saved adapter's sites");
    peft_model_free(m);
    CHECK(th_run_peft(out, sizeof out, "logits --model %s/llama_mha --adapter %s --tokens 1,2,3,4 --out %s",
                 th_fixtures(), adir, l1) == 0,
          "logits: %s", out);
    CHECK(th_run_peft(out, sizeof out, "merge --model %s/llama_mha --adapter %s --out %s", th_fixtures(),
                      adir, mdir) == 0,
          "merge: %s", out);
    CHECK(th_run_peft(out, sizeof out, "logits --model %s --tokens 1,2,3,4 --out %s", mdir, l2) == 0,
          "logits merged: %s", out);
    unsigned char *d1, *d2;
    size_t n1, n2;
    if (peft_read_file(l1, &d1, &n1) == PEFT_OK && peft_read_file(l2, &d2, &n2) == PEFT_OK) {
        CHECK(n1 == n2 && th_rel_err_f((float *)d2, (float *)d1, (long)(n1 / 4)) < 1e-5,
              "merged logits differ");
        free(d1);
        free(d2);
    } else
        CHECK(0, "logits files missing");
    CHECK(th_run_peft(out, sizeof out, "export --model %s/llama_mha --adapter %s --format gguf --out %s",
                 th_fixtures(), adir, gguf) == 1 &&
              strstr(out, "modules_to_save"),
          "gguf export: %s", out);
    snprintf(adir, sizeof adir, "%s/ak_cli_bias", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out,
                 "train --model %s/llama_mha --data %s --steps 5 --batch 2 --seq 8 --lr 1e-2 --method lora "
                 "--lora-bias 1 --out %s",
                 th_fixtures(), data, adir) == 0,
          "train lora-bias: %s", out);
    snprintf(path, sizeof path, "%s/llama_mha", th_fixtures());
    REQUIRE_OK(peft_model_load(&m, path));
    CHECK_OK(peft_adapter_load(m, adir));
    const peft_tensor *b = m->layers[1].lin[PEFT_V].lora_bias;
    double mx = 0;
    for (int64_t j = 0; b && j < b->n; j++) mx = fmax(mx, fabs(b->data[j]));
    CHECK(b && mx > 0, "lora_B.bias was not trained");
    peft_model_free(m);
    /* --trainable-tokens on a tied model: the rows move (through the embedding and the tied head) */
    snprintf(adir, sizeof adir, "%s/ak_cli_tokens", th_tmpdir());
    CHECK(th_run_peft(out, sizeof out,
                 "train --model %s/llama_tied --data %s --steps 5 --batch 2 --seq 8 --lr 1e-2 --method lora "
                 "--trainable-tokens 0,7 --out %s",
                 th_fixtures(), data, adir) == 0,
          "train trainable tokens: %s", out);
    snprintf(path, sizeof path, "%s/llama_tied", th_fixtures());
    REQUIRE_OK(peft_model_load(&m, path));
    CHECK_OK(peft_adapter_load(m, adir));
    const peft_tensor *d = m->tokens_delta;
    CHECK(d && d->n == 2 * m->cfg.dim &&
              th_rel_err_f(d->data + m->cfg.dim, m->embed->data + 7 * m->cfg.dim, m->cfg.dim) > 1e-3,
          "token 7's row was not trained");
    peft_model_free(m);
}

/* ak_modules_to_save's tensors with one key renamed (or one more tensor) by
   rename(); the load must fail naming what is wrong. */
static void ak_tensor_case(const char *from, const char *to, const char *want) {
    char src[600], dir[600], path[700], cmd[2000];
    snprintf(src, sizeof src, "%s/ak_modules_to_save", th_fixtures());
    snprintf(dir, sizeof dir, "%s/ak_tensors", th_tmpdir());
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", dir, src, dir);
    REQUIRE(system(cmd) == 0, "copy");
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", src);
    peft_safetensors st;
    REQUIRE_OK(peft_st_open(&st, path));
    peft_st_write_item items[64];
    char names[64][200];
    float *bufs[64];
    int n = 0;
    for (int i = 0; i < st.n && n < 63; i++, n++) {
        const peft_st_entry *e = &st.entries[i];
        snprintf(names[n], sizeof names[n], "%s", strcmp(e->name, from) ? e->name : to);
        int64_t cnt = 1;
        for (int d = 0; d < e->ndim; d++) cnt *= e->shape[d];
        bufs[n] = malloc(sizeof(float) * cnt);
        REQUIRE_OK(peft_st_read_f32(&st, e, bufs[n], cnt));
        items[n].name = names[n];
        items[n].dtype = PEFT_DT_F32;
        items[n].ndim = e->ndim;
        memcpy(items[n].shape, e->shape, sizeof e->shape);
        items[n].data = bufs[n];
    }
    if (!from[0]) { /* one tensor more: a copy of the first under a new name */
        items[n] = items[0];
        snprintf(names[n], sizeof names[n], "%s", to);
        items[n].name = names[n];
        bufs[n++] = NULL;
    }
    peft_st_close(&st);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    REQUIRE_OK(peft_st_write(path, items, n, NULL, 0));
    for (int i = 0; i < n; i++) free(bufs[i]);
    peft_model *m;
    snprintf(path, sizeof path, "%s/llama_gqa", th_fixtures());
    REQUIRE_OK(peft_model_load(&m, path));
    peft_status s = peft_adapter_load(m, dir);
    CHECK(s != PEFT_OK && strstr(peft_last_error(), want) &&
              strstr(peft_last_error(), "adapter_model.safetensors"),
          "%s -> %s: %s", from, to, peft_last_error());
    peft_model_free(m);
}

/* Tensor keys: PEFT 0.21 needs modules_to_save copies as base_model.model.<module>.weight
   (with ".modules_to_save.default." it raises KeyError, checked with peft 0.21.2), loads
   LoRA keys with the "default" adapter name (ak_default_keys) but not another name, and a
   tensor no setting accounts for is refused by name. */
TEST(test_adapter_keys_tensor_names) {
    ak_tensor_case("base_model.model.lm_head.weight",
                   "base_model.model.lm_head.modules_to_save.default.weight",
                   "base_model.model.lm_head.weight");
    ak_tensor_case("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                   "base_model.model.model.layers.0.self_attn.q_proj.lora_A.other.weight", "q_proj.lora_A");
    ak_tensor_case("", "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", "k_proj.lora_A");
}

/* An adapter trained by build/peft with these keys (targets that are no grid,
   modules_to_save lm_head, lora_bias, trainable tokens), loaded by the real
   PEFT (tools/ref/check_roundtrip.py): peft.h computes the logits PEFT
   computed from peft.h's files, and the adapter moved the model. */
TEST(test_adapter_keys_roundtrip_in_peft) {
    char base[512], dir[512], path[700];
    snprintf(base, sizeof base, "%s/llama_gqa", th_fixtures());
    snprintf(dir, sizeof dir, "%s/roundtrip_lora_keys", th_fixtures());
    int *tok, B, T;
    float *base_logits, *pl;
    long nb, n;
    REQUIRE(ak_ref(base, &tok, &B, &T, &base_logits, &nb), "base ref");
    snprintf(path, sizeof path, "%s/result.json", dir);
    peft_json *j;
    REQUIRE_OK(peft_json_load(&j, path));
    const peft_json *ok = peft_json_get(j, "ok");
    CHECK(ok && ok->type == PEFT_JSON_BOOL && ok->number == 1, "PEFT did not reproduce peft.h's logits");
    peft_json_free(j);
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, base));
    REQUIRE_OK(peft_adapter_load(m, dir));
    CHECK(m->save_head && m->tokens_delta && m->method.lora_bias && !m->layers[0].lin[PEFT_V].lora_A &&
              m->layers[1].lin[PEFT_V].lora_A,
          "the keys were not all used");
    snprintf(path, sizeof path, "%s/peft_logits.safetensors", dir);
    REQUIRE(th_read_ref(path, "logits", &pl, &n), "peft logits");
    peft_graph *g = peft_graph_new();
    peft_tensor *lg = peft_model_forward(m, g, tok, B, T);
    REQUIRE(lg && lg->n == n && n == nb, "forward: %s", peft_last_error());
    double e = th_rel_err_f(lg->data, pl, n), moved = th_rel_err_f(base_logits, pl, n);
    CHECK(e < 1e-5, "logits vs PEFT's rel err %.3g", e);
    CHECK(moved > 1e-3, "the adapter barely changes the model (%.3g)", moved);
    peft_graph_free(g);
    peft_model_free(m);
    free(tok);
    free(base_logits);
    free(pl);
}
