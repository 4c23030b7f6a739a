/* moe_placement — where should PEFT meet a mixture of experts?

   The survey's first open question for LLaMA 4: tune attention, the router, the
   shared expert, or the routed experts? This example pre-trains a tiny
   LLaMA-4-style MoE base (top-1 routing over 4 experts plus a shared expert in
   every layer) on the demo world's corpus, then fine-tunes a copy of it with
   each placement on the same instructions, in the same order, for the same
   number of steps, and prints:
     exact match   held-out answers all right, by teacher forcing: every answer
                   token (and <eos>) is the argmax given the right prefix, which
                   is what greedy decoding would produce (no KV cache for
                   LLaMA-4 yet, so no generation loop);
     trainable     parameters the placement trains;
     tokens/s      training throughput (non-padding tokens) on the threads given;
     routed anew   fraction of held-out (token, MoE layer) pairs whose top-1
                   expert differs from the base's on the same inputs.

   build/examples/moe_placement            quick: a smaller model, a few steps (seconds)
   build/examples/moe_placement --full     llama4-tiny shapes, the README's table (minutes)
   The pre-trained base is written to moe_base/ in the working directory. */
#define PEFT_IMPLEMENTATION
#define PEFT_TOOLS_IMPLEMENTATION
#include "../tools/peft_tools.h"   /* peft.h and the demo world */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH 16

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "moe_placement: %s: %s\n", what, peft_last_error());
    exit(1);
}

/* held-out exact match (teacher forced) and, when trace is given, each real
   token's top-1 expert per MoE layer: trace[(layer * n_eval + item) * 96 + t] */
static double evaluate(peft_model *m, const peft_demo_world *w, int n_eval, int *trace) {
    int tok[BATCH * 96], tgt[BATCH * 96], L = m->cfg.n_layers, V = m->cfg.vocab_size, right = 0;
    int *buf = (int *)malloc(sizeof(int) * (size_t)L * BATCH * 96);
    if (!buf) die("memory");
    for (int l = 0; l < L; l++) {
        m->layers[l].moe.trace = buf + (size_t)l * BATCH * 96;
        m->layers[l].moe.trace_cap = BATCH * 96;
    }
    peft_graph *g = peft_graph_new();
    peft_graph_set_grad(g, 0);
    for (int i0 = 0; i0 < n_eval; i0 += BATCH) {
        const peft_demo_item *b[BATCH];
        int B = n_eval - i0 < BATCH ? n_eval - i0 : BATCH;
        for (int i = 0; i < B; i++) b[i] = &w->items[w->n_train + i0 + i];
        int T = peft_demo_batch(b, B, tok, tgt);
        peft_graph_reset(g);
        peft_tensor *lg = peft_model_forward(m, g, tok, B, T);
        if (!lg) die("forward");
        for (int i = 0; i < B; i++) {
            int ok = 1;
            for (int t = b[i]->n_prompt - 1; t < b[i]->n_ids - 1; t++) {
                const float *row = lg->data + ((size_t)i * T + t) * V;
                int best = 0;
                for (int v = 1; v < V; v++)
                    if (row[v] > row[best]) best = v;
                ok &= best == b[i]->ids[t + 1];
            }
            right += ok;
            for (int l = 0; trace && l < L; l++)
                for (int t = 0; t < b[i]->n_ids - 1; t++)
                    trace[((size_t)l * n_eval + i0 + i) * 96 + t] = buf[(size_t)l * BATCH * 96 + i * T + t];
        }
    }
    for (int l = 0; l < L; l++) {
        m->layers[l].moe.trace = NULL;
        m->layers[l].moe.trace_cap = 0;
    }
    peft_graph_free(g);
    free(buf);
    return 100.0 * right / n_eval;
}

int main(int argc, char **argv) {
    int full = argc > 1 && !strcmp(argv[1], "--full");
    if (argc > 1 && !full) {
        fprintf(stderr, "usage: moe_placement [--full]\n");
        return 2;
    }
    const char *base_dir = "moe_base";
    int threads = 2, P = full ? 300 : 12, S = full ? 100 : 6;
    peft_set_threads(threads);
    peft_demo_world w;
    if (peft_demo_world_new(&w, 1) != PEFT_OK) die("demo world");
    int n_eval = full ? w.n_items - w.n_train : 32;

    /* 1. the base: llama4-tiny's shapes (full) or a smaller one (quick), MoE in every layer */
    peft_config c;
    if (peft_config_preset(&c, "llama4-tiny") != PEFT_OK) die("preset");
    if (!full) {
        c.dim = 64;
        c.hidden_dim = 64;
        c.hidden_dim_mlp = 128;
        c.n_layers = 2;
        c.n_heads = 4;
        c.n_kv_heads = 2;
        c.head_dim = 16;
    }
    c.top_k = 1;                          /* "routed anew" compares each token's one expert */
    c.vocab_size = (w.n_words + 7) / 8 * 8;
    c.max_seq_len = 128;
    c.bos_id = 1;
    c.eos_id = 2;
    peft_model *m;
    if (peft_model_new(&m, &c, 1, 7) != PEFT_OK) die("base model");
    peft_method fm = peft_method_defaults(PEFT_FULL);
    if (peft_attach(m, &fm) != PEFT_OK) die("attach");
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 3e-3f;
    o.warmup_steps = P / 20;
    o.total_steps = P;
    o.schedule = PEFT_SCHED_COSINE;
    o.min_lr = 3e-4f;
    peft_trainer *tr = peft_trainer_new(m, &o);
    if (!tr) die("trainer");
    int tok[BATCH * 96], tgt[BATCH * 96];
    peft_rng rng;
    peft_rng_seed(&rng, 7);
    float loss = 0;
    double t0 = now_s();
    for (int s = 0; s < P; s++) {
        peft_batch_sample(&rng, w.corpus, w.n_corpus, BATCH, 64, tok, tgt);
        if (peft_trainer_step(tr, tok, tgt, BATCH, 64, &loss) != PEFT_OK) die("pre-training");
    }
    printf("base: LLaMA-4-style, %d layers, dim %d, %d experts (top-%d) + a shared expert per layer; "
           "%lld parameters, %lld active per token\n", c.n_layers, c.dim, c.n_experts, c.top_k,
           (long long)peft_config_param_count(&c), (long long)peft_config_active_count(&c));
    printf("      pre-trained %d steps of %d x 64 corpus tokens in %.0f s, loss %.3f\n", P, BATCH,
           now_s() - t0, loss);
    peft_trainer_free(tr);
    if (peft_model_save(m, base_dir) != PEFT_OK) die("save the base");
    peft_model_free(m);

    /* 2. the base's own exact match and routing on the held-out inputs */
    size_t n_trace = (size_t)c.n_layers * n_eval * 96;
    int *route0 = (int *)malloc(sizeof(int) * n_trace), *route = (int *)malloc(sizeof(int) * n_trace);
    if (!route0 || !route) die("memory");
    if (peft_model_load(&m, base_dir) != PEFT_OK) die("load the base");
    double acc0 = evaluate(m, &w, n_eval, route0);
    peft_model_free(m);

    /* 3. each placement: LoRA r 8 (alpha 16), lr 1e-2; the router's full fine-tuning at 1e-3 */
    struct { const char *name, *targets, *moe; float lr; } pl[] = {
        { "LoRA attention q,v", "q_proj,v_proj", "none", 1e-2f },
        { "LoRA router", "none", "router", 1e-2f },
        { "LoRA shared expert", "gate_proj,up_proj,down_proj", "none", 1e-2f },
        { "LoRA routed experts", "none", "experts", 1e-2f },
        { "router fully tuned", "none", "router-full", 1e-3f },
    };
    printf("fine-tuning: %d steps of %d training instructions each (same order), %d held-out "
           "instructions\n\n", S, BATCH, n_eval);
    printf("| placement | exact match | trainable | tokens/s | routed anew |\n");
    printf("|---|---:|---:|---:|---:|\n");
    printf("| base (no fine-tuning) | %.1f%% | 0 | - | 0.0%% |\n", acc0);
    for (size_t p = 0; p < sizeof pl / sizeof pl[0]; p++) {
        if (peft_model_load(&m, base_dir) != PEFT_OK) die("load the base");
        peft_method lm = peft_method_defaults(PEFT_LORA);
        lm.lora_r = 8;
        lm.lora_alpha = 16;
        lm.seed = 5;
        if (peft_method_set(&lm, "lora_targets", pl[p].targets) != PEFT_OK ||
            peft_method_set(&lm, "moe_targets", pl[p].moe) != PEFT_OK || peft_attach(m, &lm) != PEFT_OK)
            die(pl[p].name);
        peft_trainer_opts fo = peft_trainer_defaults();
        fo.lr = pl[p].lr;
        fo.total_steps = S;
        fo.warmup_steps = S / 10;
        fo.schedule = PEFT_SCHED_COSINE;
        tr = peft_trainer_new(m, &fo);
        if (!tr) die("trainer");
        peft_rng order;
        peft_rng_seed(&order, 8);
        double tokens = 0, secs = 0;
        for (int s = 0; s < S; s++) {
            const peft_demo_item *b[BATCH];
            for (int i = 0; i < BATCH; i++) {
                b[i] = &w.items[peft_rng_u64(&order) % (uint64_t)w.n_train];
                tokens += b[i]->n_ids - 1;
            }
            int T = peft_demo_batch(b, BATCH, tok, tgt);
            double ts = now_s();
            if (peft_trainer_step(tr, tok, tgt, BATCH, T, &loss) != PEFT_OK) die("fine-tuning");
            secs += now_s() - ts;
        }
        double acc = evaluate(m, &w, n_eval, route);
        long moved = 0, n = 0;
        for (int l = 0; l < c.n_layers; l++)
            for (int i = 0; i < n_eval; i++)
                for (int t = 0; t < w.items[w.n_train + i].n_ids - 1; t++) {
                    size_t k = ((size_t)l * n_eval + i) * 96 + t;
                    moved += route[k] != route0[k];
                    n++;
                }
        printf("| %s | %.1f%% | %lld | %.0f | %.1f%% |\n", pl[p].name, acc,
               (long long)peft_model_trainable_count(m), tokens / secs, 100.0 * (double)moved / (double)n);
        fflush(stdout);
        peft_trainer_free(tr);
        peft_model_free(m);
    }
    printf("\nexact match is teacher-forced on the held-out items; one seed, one data order: differences "
           "of a few points are noise (%d items: one item is %.1f points).\n", n_eval, 100.0 / n_eval);
    free(route0);
    free(route);
    peft_demo_world_free(&w);
    return 0;
}
