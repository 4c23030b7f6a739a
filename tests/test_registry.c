/* The method registry: every built-in entry is complete, and a method
   defined here, outside peft.h, attaches, trains, checkpoints, saves and
   loads through the library's generic paths once it is registered. */
#include "harness.h"
#include <sys/stat.h>

/* ---- a toy method: a learned per-channel scale on one linear site -------------
       y = s ⊙ (W x),   s ∈ ℝ^{out}, s = scale_init at step 0 (1: the base model)
   in every layer, at the site named by the setting scale_site. Its settings
   live in peft_method.custom: [0] the site, [1] the initial scale. */
static peft_status toy_set(peft_method *m, const char *key, const char *v) {
    if (!strcmp(key, "scale_site")) {
        for (int s = 0; s < PEFT_N_SITES; s++)
            if (!strcmp(v, peft_site_name((peft_site)s))) {
                m->custom[0] = s;
                return PEFT_OK;
            }
        return PEFT_ERR_CONFIG;
    }
    char *end;
    double d = strtod(v, &end);
    if (*v == 0 || *end != 0) return PEFT_ERR_CONFIG;
    m->custom[1] = d;
    return PEFT_OK;
}

static int toy_get(const peft_method *m, const char *key, char *buf, size_t cap) {
    if (!strcmp(key, "scale_site"))
        return snprintf(buf, cap, "\"%s\"", peft_site_name((peft_site)(int)m->custom[0])) > 0;
    return snprintf(buf, cap, "%.17g", m->custom[1]) > 0;
}

static peft_status toy_attach(peft_model *m, const peft_method *cfg) {
    int k = (int)cfg->custom[0];
    for (int l = 0; l < m->cfg.n_layers; l++) {
        peft_linear_site *S = &m->layers[l].lin[k];
        int64_t shape[1] = { S->w->shape[0] };
        char name[200];
        snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.channel_scale", l,
                 peft_site_name((peft_site)k));
        S->custom[0] = peft_method_add_param(m, 1, shape, name);
        snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.channel_zero", l,
                 peft_site_name((peft_site)k));
        S->custom[1] = peft_method_add_param(m, 1, shape, name);   /* a frozen zero shift */
        if (!S->custom[0] || !S->custom[1]) return PEFT_ERR_NOMEM;
        for (int64_t j = 0; j < shape[0]; j++) S->custom[0]->data[j] = (float)cfg->custom[1];
        memset(S->custom[1]->data, 0, sizeof(float) * (size_t)shape[0]);
        peft_param_set_trainable(S->custom[1], 0);
    }
    return PEFT_OK;
}

static int64_t toy_count(const peft_config *c, const peft_method *m) {
    int k = (int)m->custom[0];
    int64_t out = c->dim;                                              /* o_proj, down_proj */
    if (k == PEFT_Q) out = (int64_t)c->n_heads * c->head_dim;
    if (k == PEFT_K || k == PEFT_V) out = (int64_t)c->n_kv_heads * c->head_dim;
    if (k == PEFT_GATE || k == PEFT_UP) out = c->hidden_dim;
    return (int64_t)c->n_layers * out;
}

static peft_tensor *toy_site_out(peft_model *m, peft_graph *g, peft_linear_site *s, int l, int k,
                                 peft_tensor *y) {
    (void)m;
    (void)l;
    (void)k;
    return s->custom[0] ? peft_bias_scale(g, y, s->custom[1], s->custom[0]) : y;
}

static const peft_method_key toy_keys[] = {
    { "scale_site", "SITE", "the linear whose output is scaled (default o_proj)", 0 },
    { "scale_init", "X", "the scale at step 0 (default 1: the base model)", 1 },
    { NULL, NULL, NULL, 0 } };

static const peft_method_def toy_def = {
    .name = "channel-scale",
    .title = "a per-channel output scale (test only)",
    .section = "tests/test_registry.c",
    .trains = "one scale per output channel of one linear",
    .zero_init = "s = 1",
    .peft_type = "CHANNEL_SCALE",
    .defaults = { .custom = { PEFT_O, 1.0 }, .lr = 0.3f },
    .keys = { toy_keys },
    .attach = toy_attach,
    .param_count = toy_count,
    .site_out = toy_site_out,
    .set = toy_set,
    .get = toy_get,
};

/* the toy's kind, registered once per process (a second registration of the name is refused) */
static peft_method_kind toy_kind(void) {
    static int done = 0;
    static peft_method_kind kind;
    if (!done && peft_method_register(&toy_def, &kind) == PEFT_OK) done = 1;
    return done ? kind : (peft_method_kind)-1;
}

static peft_model *toy_base(void) {
    peft_config c;
    if (peft_config_preset(&c, "tiny") != PEFT_OK) return NULL;
    c.dim = 64;
    c.hidden_dim = 128;
    c.n_layers = 3;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.vocab_size = 96;
    peft_model *m;
    if (peft_model_new(&m, &c, 1, 77) != PEFT_OK) return NULL;
    for (int64_t j = 0; j < m->embed->n; j++) m->embed->data[j] *= 6.0f;   /* a learnable task */
    return m;
}

static float *logits_of(peft_model *m, const int *tok, int B, int T) {
    peft_graph *g = peft_graph_new();
    peft_graph_set_grad(g, 0);
    peft_tensor *y = peft_model_forward(m, g, tok, B, T);
    float *out = y ? malloc(sizeof(float) * (size_t)y->n) : NULL;
    if (out) memcpy(out, y->data, sizeof(float) * (size_t)y->n);
    peft_graph_free(g);
    return out;
}

/* A method defined in this file, registered, goes through the generic paths:
   name lookup, settings by key, defaults, attach (the base exact at step 0),
   parameter count, training, gradient checkpointing, adapter save/load. */
TEST(test_registry_toy_method) {
    peft_method_kind kind = toy_kind();
    REQUIRE((int)kind >= PEFT_N_METHODS, "register: %s", peft_last_error());
    CHECK(peft_method_register(&toy_def, &kind) != PEFT_OK, "the same name registered twice");
    CHECK(peft_method_count() == PEFT_N_METHODS + 1, "count %d", peft_method_count());
    peft_method_kind parsed;
    REQUIRE_OK(peft_method_parse("channel-scale", &parsed));
    CHECK(parsed == kind, "parse gives kind %d, not %d", (int)parsed, (int)kind);
    CHECK(!strcmp(peft_method_name(kind), "channel-scale"), "name %s", peft_method_name(kind));
    peft_method meth = peft_method_defaults(kind);
    CHECK(meth.custom[0] == PEFT_O && meth.custom[1] == 1.0, "defaults not copied from the entry");
    REQUIRE_OK(peft_method_set(&meth, "scale_site", "up_proj"));
    CHECK(meth.custom[0] == PEFT_UP, "scale_site not set");
    CHECK(peft_method_set(&meth, "lora_rr", "1") != PEFT_OK, "an unknown key accepted");
    CHECK(strstr(peft_last_error(), "lora_rr") != NULL, "error does not name the key: %s", peft_last_error());

    enum { B = 4, T = 24 };
    int tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 5) % 96;
        tgt[i] = 10 + (tok[i] & 1);
    }
    peft_model *m = toy_base();
    REQUIRE(m, "model: %s", peft_last_error());
    float *base = logits_of(m, tok, B, T);
    REQUIRE_OK(peft_attach(m, &meth));
    CHECK(peft_model_trainable_count(m) == peft_method_param_count(&m->cfg, &meth),
          "trainable %lld, param_count %lld", (long long)peft_model_trainable_count(m),
          (long long)peft_method_param_count(&m->cfg, &meth));
    CHECK(peft_model_trainable_count(m) == 3 * 128, "trainable %lld",
          (long long)peft_model_trainable_count(m));
    float *at0 = logits_of(m, tok, B, T);
    REQUIRE(base && at0, "forward: %s", peft_last_error());
    CHECK(!memcmp(base, at0, sizeof(float) * B * T * 96), "scale 1 is not the base model at step 0");

    /* checkpointing: the same gradient of the scales, and not zero */
    float *grads[2];
    for (int ck = 0; ck < 2; ck++) {
        peft_model_set_checkpointing(m, ck);
        peft_graph *g = peft_graph_new();
        peft_tensor *L = peft_model_loss(m, g, tok, tgt, B, T);
        REQUIRE(L, "loss: %s", peft_last_error());
        REQUIRE_OK(peft_backward(g, L));
        peft_tensor *s = m->layers[1].lin[PEFT_UP].custom[0];
        grads[ck] = malloc(sizeof(float) * (size_t)s->n);
        memcpy(grads[ck], s->grad, sizeof(float) * (size_t)s->n);
        memset(s->grad, 0, sizeof(float) * (size_t)s->n);
        peft_graph_free(g);
    }
    double gmax = 0;
    for (int j = 0; j < 128; j++) gmax = fmax(gmax, fabs(grads[0][j]));
    CHECK(gmax > 0, "zero gradient of the scales");
    CHECK(!memcmp(grads[0], grads[1], sizeof(float) * 128), "checkpointing changes the scales' gradient");
    free(grads[0]);
    free(grads[1]);
    peft_model_set_checkpointing(m, 0);

    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = peft_method_get(kind)->defaults.lr;
    peft_trainer *tr = peft_trainer_new(m, &o);
    REQUIRE(tr, "trainer: %s", peft_last_error());
    float first = 0, last = 0, l;
    for (int s = 0; s < 40; s++) {
        REQUIRE_OK(peft_trainer_step(tr, tok, tgt, B, T, &l));
        if (s < 5) first += l / 5;
        if (s >= 35) last += l / 5;
    }
    peft_trainer_free(tr);
    CHECK(last < 0.9f * first, "loss %.4f -> %.4f", first, last);

    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/adapter_channel_scale", th_tmpdir());
    REQUIRE_OK(peft_adapter_save(m, dir));
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    unsigned char *cfg = NULL;
    size_t n = 0;
    REQUIRE_OK(peft_read_file(path, &cfg, &n));
    CHECK(strstr((char *)cfg, "\"peft_type\": \"CHANNEL_SCALE\"") != NULL, "%s", (char *)cfg);
    CHECK(strstr((char *)cfg, "\"scale_site\": \"up_proj\"") != NULL, "%s", (char *)cfg);
    CHECK(strstr((char *)cfg, "\"scale_init\": 1") != NULL, "%s", (char *)cfg);
    free(cfg);
    peft_model *m2 = toy_base();
    REQUIRE(m2, "model: %s", peft_last_error());
    REQUIRE_OK(peft_adapter_load(m2, dir));
    CHECK(m2->method.kind == kind && m2->method.custom[0] == PEFT_UP, "loaded as kind %d, site %g",
          (int)m2->method.kind, m2->method.custom[0]);
    float *a = logits_of(m, tok, B, T), *b = logits_of(m2, tok, B, T);
    REQUIRE(a && b, "forward: %s", peft_last_error());
    CHECK(!memcmp(a, b, sizeof(float) * B * T * 96), "the reloaded adapter gives other logits");
    CHECK(memcmp(a, base, sizeof(float) * B * T * 96) != 0, "training changed nothing");
    peft_model_free(m2);

    /* a key the method does not have is refused by name, the model left as it was */
    snprintf(path, sizeof path, "%s/adapter_channel_bad", th_tmpdir());
    mkdir(path, 0755);
    char text[300];
    snprintf(text, sizeof text, "{\"peft_type\": \"CHANNEL_SCALE\", \"scale_site\": \"o_proj\", "
             "\"scale_shift\": 2}");
    th_tmp_text("adapter_channel_bad/adapter_config.json", text);
    m2 = toy_base();
    REQUIRE(m2, "model: %s", peft_last_error());
    CHECK(peft_adapter_load(m2, path) != PEFT_OK, "an unknown adapter_config key was accepted");
    CHECK(strstr(peft_last_error(), "scale_shift") != NULL, "error does not name the key: %s",
          peft_last_error());
    CHECK(m2->method.kind == PEFT_FULL && m2->n_extra == 0, "a failed load changed the model");
    peft_model_free(m2);
    free(a);
    free(b);
    free(base);
    free(at0);
    peft_model_free(m);
}

/* Every built-in entry is complete, its name and its settings unique, and its
   defaults are the ones the library had before the registry (a table edit
   that changes a default shows here). */
TEST(test_registry_builtin_entries) {
    CHECK(peft_method_count() >= PEFT_N_METHODS, "count %d", peft_method_count());
    CHECK(peft_method_get((peft_method_kind)-1) == NULL, "kind -1 has an entry");
    CHECK(peft_method_get((peft_method_kind)peft_method_count()) == NULL, "kind past the end has an entry");
    for (int k = 0; k < PEFT_N_METHODS; k++) {
        const peft_method_def *d = peft_method_get((peft_method_kind)k);
        REQUIRE(d && d->name && d->title && d->section && d->trains && d->zero_init && d->attach &&
                    d->param_count,
                "entry %d is incomplete", k);
        CHECK((k == PEFT_FULL) == (d->peft_type == NULL), "%s: peft_type", d->name);
        CHECK(d->defaults.lr > 0 && d->defaults.schedule >= 0, "%s: no recipe lr", d->name);
        for (int j = 0; j < k; j++)
            CHECK(strcmp(d->name, peft_method_get((peft_method_kind)j)->name), "%s twice", d->name);
        /* each setting is one peft_method_set accepts (with a value of its kind) */
        for (int g = 0; g < 3; g++)
            for (const peft_method_key *key = d->keys[g]; key && key->key; key++) {
                CHECK(key->arg && key->help && strlen(key->help) > 5, "%s: %s has no help", d->name,
                      key->key);
                peft_method m = peft_method_defaults((peft_method_kind)k);
                const char *v = !strcmp(key->key, "lora_dropout") ? "0.5"
                              : key->number                           ? "2"
                              : !strcmp(key->key, "lora_targets") ? "q_proj"
                              : !strcmp(key->key, "lora_init")                        ? "gaussian"
                              : !strcmp(key->key, "adapter_gate")                     ? "peft"
                              : !strcmp(key->key, "modules_to_save")                  ? "lm_head"
                              : !strcmp(key->key, "lora_bias")                        ? "1"
                              : !strcmp(key->key, "moe_targets")                      ? "router"
                                                                                      : "3";
                CHECK(peft_method_set(&m, key->key, v) == PEFT_OK, "%s: %s=%s: %s", d->name, key->key, v,
                      peft_last_error());
            }
    }
    peft_method l = peft_method_defaults(PEFT_LORA), q = peft_method_defaults(PEFT_QLORA);
    CHECK(l.lora_r == 8 && l.lora_alpha == 8 && l.lora_dropout == 0 &&
              l.lora_targets == (1u << PEFT_Q | 1u << PEFT_V),
          "LoRA defaults changed");
    CHECK(q.lora_r == 64 && q.lora_alpha == 16 && fabsf(q.lora_dropout - 0.1f) < 1e-7f &&
              q.lora_targets == (1u << PEFT_N_SITES) - 1,
          "QLoRA defaults changed");
    peft_method a = peft_method_defaults(PEFT_ADAPTER_V2), e = peft_method_defaults(PEFT_EXCITOR);
    CHECK(a.adapter_len == 10 && a.adapter_layers == 0, "adapter defaults changed");
    CHECK(e.excitor_len == 30 && e.excitor_rank == 16 && e.excitor_layers == 0, "Excitor defaults changed");
    CHECK(peft_method_get(PEFT_QLORA)->defaults.max_grad_norm == 0.3f, "QLoRA's recipe clips at 0.3");
}

static int have_peft_bin(void) {
    FILE *probe = fopen(th_peft_bin(), "rb");
    if (probe) fclose(probe);
    return probe != NULL;
}

/* The command line iterates the registry: `peft train --help` names every
   method and every setting's flag, `peft info --method` counts each
   method's parameters as the library does, and the README's methods table
   is exactly `peft info --methods` (a method added to the registry and not
   to the README, or the reverse, fails here). */
TEST(test_registry_cli_and_readme) {
    static char out[1 << 16], line[256];
    if (!have_peft_bin()) SKIP("%s not built", th_peft_bin());
    REQUIRE(th_run_peft(out, sizeof out, "train --help") == 0, "train --help: %s", out);
    for (int k = 0; k < PEFT_N_METHODS; k++) {
        const peft_method_def *d = peft_method_get((peft_method_kind)k);
        snprintf(line, sizeof line, "      %-12s %s\n", d->name, d->title);
        CHECK(strstr(out, line) != NULL, "train --help does not list %s", d->name);
        for (int g = 0; g < 3; g++)
            for (const peft_method_key *key = d->keys[g]; key && key->key; key++) {
                char flag[64] = "--";
                for (int i = 0; key->key[i] && i < 60; i++)
                    flag[i + 2] = key->key[i] == '_' ? '-' : key->key[i];
                snprintf(line, sizeof line, "  %s %s ", flag, key->arg);
                CHECK(strstr(out, line) != NULL, "train --help does not show %s", line);
            }
    }
    peft_config c;
    REQUIRE_OK(peft_config_preset(&c, "tiny"));
    for (int k = 0; k < PEFT_N_METHODS; k++) {
        peft_method m = peft_method_defaults((peft_method_kind)k);
        char want[64];
        snprintf(want, sizeof want, "%lld", (long long)peft_method_param_count(&c, &m));
        REQUIRE(th_run_peft(out, sizeof out, "info --preset tiny --method %s", peft_method_name(m.kind)) == 0,
                "info --method %s: %s", peft_method_name(m.kind), out);
        /* the count is printed with thousands separators */
        char digits[64];
        int n = 0;
        const char *t = strstr(out, "trainable");
        for (const char *p = t ? t : ""; *p && *p != '(' && n < 63; p++)
            if (*p >= '0' && *p <= '9') digits[n++] = *p;
        digits[n] = 0;
        CHECK(!strcmp(digits, want), "%s: peft info says %s, peft_method_param_count %s",
              peft_method_name(m.kind), digits, want);
    }
    REQUIRE(th_run_peft(out, sizeof out, "info --methods") == 0, "info --methods: %s", out);
    unsigned char *readme = NULL;
    size_t len = 0;
    if (peft_read_file("README.md", &readme, &len) != PEFT_OK) SKIP("README.md not in the working folder");
    const char *at = strstr((const char *)readme, out);
    CHECK(at != NULL, "README's methods table is not `peft info --methods`:\n%s", out);
    if (at) {
        CHECK(at >= (const char *)readme + 2 && at[-1] == '\n' && at[-2] == '\n', "a row above the table");
        CHECK(at[strlen(out)] != '|', "the README's table has a row the registry does not");
    }
    int rows = 0;
    for (const char *p = out; (p = strstr(p, "\n| `")); p++) rows++;
    CHECK(rows == PEFT_N_METHODS, "%d rows for %d built-in methods", rows, PEFT_N_METHODS);
    free(readme);
}
