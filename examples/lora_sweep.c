/* lora_sweep — how much rank, and where, does LoRA need?

   On the demo's task (the base pre-trained by `make demo`):
   1. rank r ∈ {1, 2, 4, 8, 16, 32} on q_proj and v_proj: held-out exact
      match against trainable parameters — where the returns flatten;
   2. placement at equal rank (r = 8): attention q,v; all of attention;
      attention + MLP; all linears of the top half of the layers only.

   build/examples/lora_sweep [BASE_DIR] [STEPS]   (defaults demo/base, 100) */
#define PEFT_IMPLEMENTATION
#define PEFT_TOOLS_IMPLEMENTATION
#include "../tools/peft_tools.h"   /* peft.h and the demo world */
#include <stdio.h>
#include <stdlib.h>

static const char *base = "demo/base";
static int steps = 100;

/* fine-tunes one LoRA configuration; prints and returns exact match % */
static double run(const peft_demo_world *w, const char *label, int r, const char *targets,
                  const char *layers) {
    peft_model *m;
    if (peft_model_load(&m, base) != PEFT_OK) {
        fprintf(stderr, "%s\nRun `make demo` first: it pre-trains the base model this example adapts.\n",
                peft_last_error());
        exit(1);
    }
    peft_method lora = peft_method_defaults(PEFT_LORA);
    lora.lora_r = r;
    lora.lora_alpha = 2.0f * r;                       /* alpha/r fixed at 2: only capacity changes */
    lora.seed = 5;
    if (peft_method_set(&lora, "lora_targets", targets) != PEFT_OK ||
        peft_method_set(&lora, "lora_layers", layers) != PEFT_OK || peft_attach(m, &lora) != PEFT_OK) {
        fprintf(stderr, "%s\n", peft_last_error());
        exit(1);
    }
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 1e-2f; o.total_steps = steps; o.warmup_steps = steps / 10; o.schedule = PEFT_SCHED_COSINE;
    peft_trainer *tr = peft_trainer_new(m, &o);
    peft_rng order;
    peft_rng_seed(&order, 8);
    int tok[16 * 96], tgt[16 * 96];
    float loss = 0;
    for (int s = 0; s < steps; s++) {
        const peft_demo_item *b[16];
        for (int i = 0; i < 16; i++) b[i] = &w->items[peft_rng_u64(&order) % (uint64_t)w->n_train];
        int T = peft_demo_batch(b, 16, tok, tgt);
        peft_trainer_step(tr, tok, tgt, 16, T, &loss);
    }
    peft_graph *g = peft_graph_new();
    int right = 0;
    for (int i = w->n_train; i < w->n_items; i++) right += peft_demo_correct(m, g, &w->items[i]);
    double acc = 100.0 * right / (w->n_items - w->n_train);
    printf("  %-28s %9lld  %7.3f%%  loss %.3f  exact match %5.1f%%\n", label,
           (long long)peft_model_trainable_count(m),
           100.0 * (double)peft_model_trainable_count(m) / (double)peft_model_base_count(m), loss, acc);
    fflush(stdout);
    peft_graph_free(g);
    peft_trainer_free(tr);
    peft_model_free(m);
    return acc;
}

int main(int argc, char **argv) {
    if (argc > 1) base = argv[1];
    if (argc > 2) steps = atoi(argv[2]);
    peft_set_threads(2);
    peft_demo_world w;
    peft_demo_world_new(&w, 1);
    printf("1. rank sweep, LoRA on q_proj + v_proj, %d steps each\n", steps);
    printf("  %-28s %9s  %8s\n", "configuration", "trainable", "of base");
    int ranks[6] = { 1, 2, 4, 8, 16, 32 };
    double acc[6];
    for (int i = 0; i < 6; i++) {
        char label[32];
        snprintf(label, sizeof label, "r = %d", ranks[i]);
        acc[i] = run(&w, label, ranks[i], "q_proj,v_proj", "all");
    }
    int best = 0;
    for (int i = 1; i < 6; i++) if (acc[i] > acc[best]) best = i;
    int knee = best;
    for (int i = 0; i < best; i++) if (acc[i] >= acc[best] - 3.0) { knee = i; break; }
    printf("  -> within 3 points of the best (r = %d) already at r = %d: returns diminish beyond it\n\n",
           ranks[best], ranks[knee]);

    printf("2. placement at r = 8\n");
    run(&w, "attention q, v", 8, "q_proj,v_proj", "all");
    run(&w, "all attention q, k, v, o", 8, "q_proj,k_proj,v_proj,o_proj", "all");
    run(&w, "attention + MLP (all-linear)", 8, "all-linear", "all");
    char top[32];
    peft_model *m;
    if (peft_model_load(&m, base) == PEFT_OK) {
        snprintf(top, sizeof top, "%d-%d", m->cfg.n_layers / 2, m->cfg.n_layers - 1);
        peft_model_free(m);
        run(&w, "all-linear, top half only", 8, "all-linear", top);
    }
    peft_demo_world_free(&w);
    return 0;
}
