/* zero_init_gating — LLaMA-Adapter's zero-initialised attention gate.

   o = tanh(g) ⊙ softmax(q·Kpᵀ/√d)·Vp + (the ordinary attention), g = 0:
   1. at step 0 the adapted model IS the base model, bit for bit;
   2. the prompts get exactly zero gradient until the gate moves (only g
      learns at first), so training starts from the base's knowledge;
   3. the gates' trajectory over training;
   4. the paper's ablation in miniature: the same run with random gates.

   build/examples/zero_init_gating [BASE_DIR]   (default demo/base, from `make demo`) */
#define PEFT_IMPLEMENTATION
#define PEFT_TOOLS_IMPLEMENTATION
#include "../tools/peft_tools.h"   /* peft.h and the demo world */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static double mean_abs_gate(const peft_model *m) {
    double s = 0; int n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const peft_tensor *g = m->layers[l].attn.gate;
        if (g) for (int64_t i = 0; i < g->n; i++) { s += fabs(tanh(g->data[i])); n++; }
    }
    return n ? s / n : 0;
}

/* trains an adapter-v1 on the demo instructions; returns held-out exact match % */
static double run(const char *base, const peft_demo_world *w, int random_gate, int verbose) {
    peft_model *m;
    if (peft_model_load(&m, base) != PEFT_OK) { fprintf(stderr, "%s\n", peft_last_error()); exit(1); }
    peft_method v1 = peft_method_defaults(PEFT_ADAPTER_V1);
    v1.seed = 3;
    peft_attach(m, &v1);
    if (random_gate) {
        peft_rng r;
        peft_rng_seed(&r, 11);
        for (int l = 0; l < m->cfg.n_layers; l++)
            if (m->layers[l].attn.gate)
                for (int64_t i = 0; i < m->layers[l].attn.gate->n; i++)
                    m->layers[l].attn.gate->data[i] = peft_rng_normal(&r);
    }
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 1e-2f; o.beta2 = 0.95f; o.weight_decay = 0.02f;
    peft_trainer *tr = peft_trainer_new(m, &o);
    peft_rng order;
    peft_rng_seed(&order, 8);
    int tok[16 * 96], tgt[16 * 96];
    for (int s = 0; s < 80; s++) {
        const peft_demo_item *b[16];
        for (int i = 0; i < 16; i++) b[i] = &w->items[peft_rng_u64(&order) % (uint64_t)w->n_train];
        int T = peft_demo_batch(b, 16, tok, tgt);
        float loss = 0;
        peft_trainer_step(tr, tok, tgt, 16, T, &loss);
        if (verbose && s % 10 == 0)
            printf("   step %2d  loss %.3f  mean |tanh(g)| %.4f\n", s, loss, mean_abs_gate(m));
    }
    peft_graph *g = peft_graph_new();
    int right = 0;
    for (int i = w->n_train; i < w->n_items; i++) right += peft_demo_correct(m, g, &w->items[i]);
    peft_graph_free(g);
    peft_trainer_free(tr);
    peft_model_free(m);
    return 100.0 * right / (w->n_items - w->n_train);
}

int main(int argc, char **argv) {
    const char *base = argc > 1 ? argv[1] : "demo/base";
    peft_demo_world w;
    peft_demo_world_new(&w, 1);                      /* the demo's world (seed 1) */
    peft_model *m0, *m;
    if (peft_model_load(&m0, base) != PEFT_OK) {
        fprintf(stderr, "%s\nRun `make demo` first: it pre-trains the base model this example adapts.\n",
                peft_last_error());
        return 1;
    }
    peft_model_load(&m, base);
    peft_method v1 = peft_method_defaults(PEFT_ADAPTER_V1);
    peft_attach(m, &v1);
    const peft_demo_item *it = &w.items[0];
    peft_graph *g0 = peft_graph_new(), *g1 = peft_graph_new();
    peft_tensor *a = peft_model_forward(m0, g0, it->ids, 1, it->n_ids);
    peft_tensor *b = peft_model_forward(m, g1, it->ids, 1, it->n_ids);
    printf("1. base vs adapted at step 0 (%lld adapter parameters): logits %s\n",
           (long long)peft_model_trainable_count(m),
           memcmp(a->data, b->data, sizeof(float) * a->n) == 0 ? "identical, bit for bit" : "DIFFER");

    int tok[96], tgt[96];
    const peft_demo_item *one[1] = { it };
    int T = peft_demo_batch(one, 1, tok, tgt);
    peft_graph_reset(g1);
    peft_backward(g1, peft_model_loss(m, g1, tok, tgt, 1, T));
    double gp = 0, gg = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        peft_attn_site *s = &m->layers[l].attn;
        if (!s->prompt) continue;
        for (int64_t i = 0; i < s->prompt->n; i++) gp = fmax(gp, fabs(s->prompt->grad[i]));
        for (int64_t i = 0; i < s->gate->n; i++) gg = fmax(gg, fabs(s->gate->grad[i]));
    }
    printf("2. first gradient: max |d prompts| = %g, max |d gates| = %.3g\n", gp, gg);
    printf("   (the prompts cannot move until the gates do: the base is never disturbed by untrained "
           "prompts)\n");
    peft_graph_free(g0); peft_graph_free(g1);
    peft_model_free(m0); peft_model_free(m);

    printf("3. gate trajectory (zero-init), 80 steps on the demo's instructions:\n");
    double zero = run(base, &w, 0, 1);
    printf("4. ablation: random-init gates (tanh(g) ~ 0.6 from the first step)\n");
    double rnd = run(base, &w, 1, 0);
    printf("   held-out exact match: zero-init %.1f%%, random-init %.1f%%\n", zero, rnd);
    printf("   (paper, ScienceQA: 84.04 vs 40.77) %s\n", zero >= rnd ? "- same direction here"
                                                           : "- NOT the paper's direction at this scale");
    peft_demo_world_free(&w);
    return 0;
}
