/* LLaMA-4 mixture of experts against transformers' Llama4ForCausalLM
   (fixtures from tools/ref/make_llama4_fixtures.py): logits to 1e-4
   relative, loss to 1e-5 relative, every parameter's gradient to 1e-3
   relative, tokens per expert equal to transformers' routing. */
#include "harness.h"

static void check_llama4(const char *name) {
    char dir[512], ref[600];
    snprintf(dir, sizeof dir, "%s/%s", th_fixtures(), name);
    snprintf(ref, sizeof ref, "%s/ref.safetensors", dir);
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, dir));
    REQUIRE(m->cfg.llama4 && m->cfg.unused[0] == 0, "%s: not read as LLaMA-4 (unused keys: %s)", name,
            m->cfg.unused);
    peft_model_set_trainable_all(m, 1);
    float *tok_f, *lab_f, *logits, *loss;
    long nt, nl, nlog, n1;
    REQUIRE(th_read_ref(ref, "tokens", &tok_f, &nt) && th_read_ref(ref, "labels", &lab_f, &nl) &&
                    th_read_ref(ref, "logits", &logits, &nlog) && th_read_ref(ref, "loss", &loss, &n1),
            "%s: reference missing", ref);
    peft_safetensors st;
    REQUIRE_OK(peft_st_open(&st, ref));
    const peft_st_entry *te = peft_st_find(&st, "tokens");
    int B = (int)te->shape[0], T = (int)te->shape[1];
    int *tokens = malloc(sizeof(int) * nt), *targets = malloc(sizeof(int) * nt);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = (int)tok_f[b * T + t];
            targets[b * T + t] = t + 1 < T ? (int)lab_f[b * T + t + 1] : -100;
        }
    peft_graph *g = peft_graph_new();
    peft_tensor *lg = peft_model_forward(m, g, tokens, B, T);
    REQUIRE(lg && lg->n == nlog, "%s: forward failed: %s", name, peft_last_error());
    double err = th_rel_err_f(lg->data, logits, nlog);
    CHECK(err < 1e-4, "%s: logits rel err %.3g", name, err);
    peft_tensor *L = peft_cross_entropy(g, lg, targets);
    REQUIRE(L, "%s: loss failed", name);
    CHECK(fabs(L->data[0] - loss[0]) < 1e-5 * fabs(loss[0]), "%s: loss %.7f vs transformers %.7f", name,
          L->data[0], loss[0]);
    REQUIRE_OK(peft_backward(g, L));
    int checked = 0;
    double worst = 0;
    for (int i = 0; i < m->n_params; i++) {
        peft_tensor *p = m->params[i];
        char key[300];
        snprintf(key, sizeof key, "grad.%s", p->name);
        float *gr;
        long ng;
        if (!th_read_ref(ref, key, &gr, &ng)) {
            CHECK(p == m->lm_head && m->cfg.tie_embeddings, "%s: no reference gradient for %s", name, p->name);
            continue;
        }
        CHECK(ng == p->n, "%s: %s size", name, p->name);
        double ge = th_rel_err_f(p->grad, gr, ng);
        worst = ge > worst ? ge : worst;
        CHECK(ge < 1e-3, "%s: gradient of %s rel err %.3g", name, p->name, ge);
        checked++;
        free(gr);
    }
    CHECK(checked == m->n_params, "%s: checked %d of %d gradients", name, checked, m->n_params);
    /* load balance: tokens per expert of each MoE layer, as transformers routed them */
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
    printf("      %s: logits %.2g, loss %.2g, worst gradient %.2g (relative)\n", name, err,
           fabs(L->data[0] - loss[0]) / fabs(loss[0]), worst);
    peft_st_close(&st);
    peft_graph_free(g);
    peft_model_free(m);
    free(tok_f); free(lab_f); free(logits); free(loss); free(tokens); free(targets);
}

TEST(test_llama4_moe_chunked_nope_gqa) { check_llama4("llama4_moe"); }
TEST(test_llama4_interleaved_top2_tied) { check_llama4("llama4_interleaved"); }
