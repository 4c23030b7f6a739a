/* demo — the survey's comparison on a CPU in minutes (`make demo`).

   1. builds a synthetic world (peft_demo_world_new): facts about invented
      people, sums, letter reversal; a pre-training corpus and Alpaca-style
      instructions with a held-out test split;
   2. pre-trains a tiny LLaMA-3-style model (GQA, RoPE, SwiGLU) on the corpus;
   3. fine-tunes that base with full fine-tuning, LoRA, LLaMA-Adapter V1 and
      V2, LLaMA-Excitor and QLoRA — same data, same step budget;
   4. prints the table and writes results.md, results.json, loss.svg and
      tradeoff.svg into the output folder (default demo/).

   build/demo [--out DIR] [--quick] [--threads N] [--seed S]
   --quick runs a few steps per phase (what the tests use). */
#define PEFT_IMPLEMENTATION
#define PEFT_TOOLS_IMPLEMENTATION
#include "peft_tools.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "\ndemo: %s: %s\n", what, peft_last_error());
    exit(1);
}

typedef struct {
    const char *name;
    peft_method method;
    float lr;
    double trainable, pct, seconds, tok_s, mem_mb, act_mb, final_loss, acc, acc_family[PEFT_N_TASKS];
    double *curve;
    int n_curve;
} run_result;

/* memory of the training state: weights as stored (4-bit for QLoRA), and
   gradients and AdamW state of the trainable part. (Activations are
   reported apart: at this tiny scale they dwarf the weights.) */
static double train_memory_mb(const peft_model *m, const peft_trainer *tr) {
    double frozen = 0, trainable = (double)peft_model_trainable_count(m);
    for (int i = 0; i < m->n_params; i++)
        if (!m->params[i]->requires_grad && m->params[i]->data) frozen += 4.0 * (double)m->params[i]->n;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int s = 0; s < PEFT_N_SITES; s++)
            if (m->layers[l].lin[s].q4) frozen += (double)peft_q4_bytes(m->layers[l].lin[s].q4);
    return (frozen + 4.0 * trainable + 4.0 * trainable + (double)peft_adamw_state_bytes(&tr->opt)) /
           1048576.0;
}

static int eval_stride = 1;   /* --quick evaluates every 12th test item */

/* Greedy answers for all test items at once with a KV cache: the prompts
   are right-padded into one prefill, each row is then rewound to its own
   length (causal attention: the padding never touched the real positions),
   and every step feeds one token per row; finished rows are emptied and fed
   a dummy token (the batch keeps its shape). */
static void evaluate(peft_model *m, const peft_demo_world *w, run_result *r) {
    const peft_demo_item *its[512];
    int n = 0, P = 0, T = 0, V = m->cfg.vocab_size;
    for (int i = w->n_train; i < w->n_items && n < 512; i += eval_stride) its[n++] = &w->items[i];
    for (int b = 0; b < n; b++) {
        if (its[b]->n_prompt > P) P = its[b]->n_prompt;
        if (its[b]->n_ids > T) T = its[b]->n_ids;
    }
    size_t nb = n > 0 ? (size_t)n : 1;
    int *feed = calloc(nb * (size_t)(P > 0 ? P : 1), sizeof(int)), *len = malloc(sizeof(int) * nb);
    int *done = calloc(nb, sizeof(int)), *ok = malloc(sizeof(int) * nb);
    peft_kv_cache *cache;
    if (!feed || !len || !done || !ok || peft_kv_cache_new(&cache, m, n, T + 1) != PEFT_OK)
        die("out of memory");
    for (int b = 0; b < n; b++) {
        memcpy(feed + (size_t)b * P, its[b]->ids, sizeof(int) * its[b]->n_prompt);
        len[b] = its[b]->n_prompt;
        ok[b] = 1;
    }
    peft_graph *g = peft_graph_new();
    peft_graph_set_grad(g, 0);
    peft_tensor *lg = peft_model_forward_cached(m, g, cache, feed, n, P);
    if (!lg) die("evaluation");
    for (int b = 0; b < n; b++) peft_kv_cache_set_len(cache, b, len[b]);
    for (int step = 0; lg; step++) {
        int active = 0, rowT = step == 0 ? P : 1;
        for (int b = 0; b < n; b++) {
            int at = step == 0 ? len[b] - 1 : 0;
            if (done[b]) { feed[b] = 0; continue; }
            /* argmax */
            int best = peft_sample(lg->data + ((size_t)b * rowT + at) * V, V, NULL, NULL, NULL, NULL);
            if (best != its[b]->ids[len[b]]) ok[b] = 0;
            feed[b] = best;
            len[b]++;
            if (best == 2 || !ok[b] || len[b] >= its[b]->n_ids) done[b] = 1;
            active |= !done[b];
        }
        if (!active) break;
        /* a 1-token dummy row */
        for (int b = 0; b < n; b++) if (done[b]) peft_kv_cache_set_len(cache, b, 0);
        peft_graph_reset(g);
        lg = peft_model_forward_cached(m, g, cache, feed, n, 1);
        if (!lg) die("evaluation");
    }
    int right[PEFT_N_TASKS] = { 0 }, count[PEFT_N_TASKS] = { 0 }, all = 0;
    for (int b = 0; b < n; b++) {
        int good = ok[b] && len[b] == its[b]->n_ids;
        right[its[b]->family] += good;
        count[its[b]->family]++;
        all += good;
    }
    for (int f = 0; f < PEFT_N_TASKS; f++) r->acc_family[f] = count[f] ? 100.0 * right[f] / count[f] : 0;
    r->acc = 100.0 * all / n;
    peft_graph_free(g);
    peft_kv_cache_free(cache);
    free(feed); free(len); free(done); free(ok);
}

static void write_files(const char *out, run_result *runs, int n, const peft_demo_world *w,
                        double base_params, double pretrain_s, float pretrain_loss, int ft_steps) {
    char path[512];
    snprintf(path, sizeof path, "%s/results.md", out);
    FILE *f = fopen(path, "w");
    if (!f) die(path);
    time_t t = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&t));
    fprintf(f, "# peft.h demo results (%s, %d threads)\n\n", date, peft_get_threads());
    fprintf(f,
            "Base: tiny LLaMA-3-style model, %.0f parameters, pre-trained %.0f s to loss %.3f on the "
            "synthetic corpus. "
            "Each method: %d steps, batch 16, same data order. Accuracy: exact match on %d held-out "
            "instructions.\n\n",
            base_params, pretrain_s, pretrain_loss, ft_steps, w->n_items - w->n_train);
    fprintf(f, "| method | trainable | %% of base | train s | tokens/s | weights+optimizer MB | activations "
               "MB | final loss | exact match %% | %% of full |");
    for (int k = 0; k < PEFT_N_TASKS; k++) fprintf(f, " %s %% |", peft_task_name(k));
    fprintf(f, "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (int k = 0; k < PEFT_N_TASKS; k++) fprintf(f, "---:|");
    fprintf(f, "\n");
    for (int i = 0; i < n; i++) {
        run_result *r = &runs[i];
        fprintf(f, "| %s | %.0f | %.3f | %.1f | %.0f | %.2f | %.1f | %.3f | %.1f | %.0f |", r->name,
                r->trainable, r->pct, r->seconds, r->tok_s, r->mem_mb, r->act_mb, r->final_loss, r->acc,
                runs[0].acc > 0 ? 100.0 * r->acc / runs[0].acc : 0);
        for (int k = 0; k < PEFT_N_TASKS; k++) fprintf(f, " %.1f |", r->acc_family[k]);
        fprintf(f, "\n");
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/results.json", out);
    f = fopen(path, "w");
    if (!f) die(path);
    fprintf(f,
            "{\n  \"date\": \"%s\",\n  \"threads\": %d,\n  \"base_parameters\": %.0f,\n  \"finetune_steps\": "
            "%d,\n  \"methods\": [\n",
            date, peft_get_threads(), base_params, ft_steps);
    for (int i = 0; i < n; i++) {
        run_result *r = &runs[i];
        fprintf(f,
                "    {\"method\": \"%s\", \"trainable\": %.0f, \"percent_of_base\": %.5f, \"train_seconds\": "
                "%.2f, "
                "\"tokens_per_second\": %.1f, \"weights_optimizer_mb\": %.3f, \"activations_mb\": %.2f, "
                "\"final_loss\": %.4f, \"exact_match\": %.2f, "
                "\"percent_of_full\": %.1f, \"by_family\": {",
                r->name, r->trainable, r->pct, r->seconds, r->tok_s, r->mem_mb, r->act_mb, r->final_loss,
                r->acc, runs[0].acc > 0 ? 100.0 * r->acc / runs[0].acc : 0);
        for (int k = 0; k < PEFT_N_TASKS; k++)
            fprintf(f, "%s\"%s\": %.2f", k ? ", " : "", peft_task_name(k), r->acc_family[k]);
        fprintf(f, "}}%s\n", i + 1 < n ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
    peft_series s[8];
    double *xs = malloc(sizeof(double) * (ft_steps + 1));
    for (int i = 0; i <= ft_steps; i++) xs[i] = i + 1;
    for (int i = 0; i < n; i++) {
        s[i].name = runs[i].name;
        s[i].x = xs;
        s[i].y = runs[i].curve;
        s[i].n = runs[i].n_curve;
        s[i].points_only = 0;
    }
    snprintf(path, sizeof path, "%s/loss.svg", out);
    if (peft_svg_plot(path, "Fine-tuning loss per method", "step", "training loss", 0, s, n) != PEFT_OK)
        die(path);
    double px[8][1], py[8][1];
    for (int i = 0; i < n; i++) {
        px[i][0] = runs[i].trainable; py[i][0] = runs[i].acc;
        s[i].x = px[i]; s[i].y = py[i]; s[i].n = 1; s[i].points_only = 1;
    }
    snprintf(path, sizeof path, "%s/tradeoff.svg", out);
    if (peft_svg_plot(path, "Accuracy vs trainable parameters", "trainable parameters", "exact match %", 1, s,
                      n) != PEFT_OK)
        die(path);
    free(xs);
}

int main(int argc, char **argv) {
    const char *out = "demo";
    int quick = 0, threads = 2;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else { fprintf(stderr, "usage: demo [--out DIR] [--quick] [--threads N] [--seed S]\n"); return 2; }
    }
    peft_set_threads(threads);
    if (quick) eval_stride = 12;
    char path[512];
    snprintf(path, sizeof path, "mkdir -p '%s'", out);
    if (system(path) != 0) { fprintf(stderr, "demo: cannot create %s\n", out); return 1; }
    double t_start = now_s();

    /* 1. the world */
    printf("[1/4] synthetic world\n");
    peft_demo_world w;
    if (peft_demo_world_new(&w, seed) != PEFT_OK) die("world");
    printf("  %d words, corpus of %lld tokens, %d train and %d test instructions (Alpaca template)\n",
           w.n_words, (long long)w.n_corpus, w.n_train, w.n_items - w.n_train);

    /* 2. pre-train the base */
    printf("[2/4] pre-training a tiny LLaMA-3-style base\n");
    peft_config c;
    peft_config_preset(&c, "tiny");
    c.dim = 192; c.hidden_dim = 512; c.n_layers = 4; c.n_heads = 6; c.n_kv_heads = 2; c.head_dim = 32;
    c.vocab_size = (w.n_words + 7) / 8 * 8; c.max_seq_len = 128; c.bos_id = 1; c.eos_id = 2;
    peft_model *base;
    if (peft_model_new(&base, &c, 1, seed) != PEFT_OK) die("base model");
    peft_method full = peft_method_defaults(PEFT_FULL);
    peft_attach(base, &full);
    int P = quick ? 4 : 500, B = 16, T = 64;
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 3e-3f;
    o.warmup_steps = P / 20;
    o.total_steps = P;
    o.schedule = PEFT_SCHED_COSINE;
    o.min_lr = 3e-4f;
    peft_trainer *tr = peft_trainer_new(base, &o);
    int *tok = malloc(sizeof(int) * B * 128), *tgt = malloc(sizeof(int) * B * 128);
    peft_rng rng;
    peft_rng_seed(&rng, seed);
    double t0 = now_s();
    float loss = 0, ema = 0;
    for (int s = 0; s < P; s++) {
        peft_batch_sample(&rng, w.corpus, w.n_corpus, B, T, tok, tgt);
        if (peft_trainer_step(tr, tok, tgt, B, T, &loss) != PEFT_OK) die("pre-training");
        ema = s ? 0.95f * ema + 0.05f * loss : loss;
        double el = now_s() - t0;
        if (s % 5 == 0 || s == P - 1)
            peft_progress(stdout, "pretrain", s + 1, P, ema, 0, (double)(s + 1) * B * T / el, el);
    }
    double pretrain_s = now_s() - t0;
    printf("  base: %lld parameters, loss %.3f after %.0f s\n", (long long)peft_model_base_count(base), ema,
           pretrain_s);
    peft_trainer_free(tr);
    snprintf(path, sizeof path, "%s/base", out);
    if (peft_model_save(base, path) != PEFT_OK) die(path);
    peft_model_free(base);

    /* 3. every method on the same data and budget */
    int S = quick ? 3 : 80;
    run_result runs[PEFT_N_METHODS];
    memset(runs, 0, sizeof runs);
    /* every built-in method of the registry; the learning rates are each the best of a small sweep
       on this demo (the papers' own recipes are the registry's defaults: peft_method_get(k)->defaults) */
    const char *names[PEFT_N_METHODS];
    float lrs[PEFT_N_METHODS] = { [PEFT_FULL] = 1e-3f, [PEFT_LORA] = 1e-2f, [PEFT_ADAPTER_V1] = 1e-2f,
                                  [PEFT_ADAPTER_V2] = 1e-2f, [PEFT_EXCITOR] = 3e-2f, [PEFT_QLORA] = 1e-2f };
    for (int k = 0; k < PEFT_N_METHODS; k++) names[k] = peft_method_name((peft_method_kind)k);
    printf("[3/4] fine-tuning with each method: %d steps of %d instructions\n", S, B);
    for (int k = 0; k < PEFT_N_METHODS; k++) {
        run_result *r = &runs[k];
        peft_method_kind kind = PEFT_FULL;
        peft_method_parse(names[k], &kind);
        r->name = names[k];
        r->method = peft_method_defaults(kind);
        r->method.seed = seed;
        if (kind == PEFT_LORA) { r->method.lora_r = 8; r->method.lora_alpha = 16; }
        if (kind == PEFT_QLORA) {
            r->method.lora_r = 4;
            r->method.lora_alpha = 8;
            r->method.lora_dropout = 0.05f;
        }
        r->lr = lrs[k];
        peft_model *m;
        if (peft_model_load(&m, path) != PEFT_OK) die(path);
        if (peft_attach(m, &r->method) != PEFT_OK) die(names[k]);
        r->trainable = (double)peft_model_trainable_count(m);
        r->pct = 100.0 * r->trainable / (double)peft_model_base_count(m);
        peft_trainer_opts fo = peft_trainer_defaults();
        fo.lr = r->lr; fo.total_steps = S; fo.warmup_steps = S / 10;
        fo.schedule = kind == PEFT_QLORA ? PEFT_SCHED_CONSTANT : PEFT_SCHED_COSINE;
        if (kind == PEFT_QLORA) fo.max_grad_norm = 0.3f;              /* QLoRA's recipe */
        if (kind == PEFT_ADAPTER_V1 || kind == PEFT_ADAPTER_V2) { fo.beta2 = 0.95f; fo.weight_decay = 0.02f; }
        peft_trainer *ft = peft_trainer_new(m, &fo);
        peft_rng order;
        peft_rng_seed(&order, seed + 7);              /* the same batches for every method */
        r->curve = malloc(sizeof(double) * S);
        double tokens = 0;
        t0 = now_s();
        for (int s = 0; s < S; s++) {
            const peft_demo_item *batch[16];
            for (int b = 0; b < B; b++) batch[b] = &w.items[peft_rng_u64(&order) % (uint64_t)w.n_train];
            int TT = peft_demo_batch(batch, B, tok, tgt);
            if (peft_trainer_step(ft, tok, tgt, B, TT, &loss) != PEFT_OK) die(names[k]);
            r->curve[r->n_curve++] = loss;
            tokens += (double)B * TT;
            double el = now_s() - t0;
            if (s % 5 == 0 || s == S - 1) peft_progress(stdout, names[k], s + 1, S, loss, 0, tokens / el, el);
        }
        r->seconds = now_s() - t0;
        r->tok_s = tokens / r->seconds;
        r->mem_mb = train_memory_mb(m, ft);
        r->act_mb = (double)peft_graph_arena_bytes(ft->graph) / 1048576.0;
        r->final_loss = 0;
        int tail = S < 10 ? S : 10;
        for (int s = S - tail; s < S; s++) r->final_loss += r->curve[s] / tail;
        evaluate(m, &w, r);
        printf("  %-11s %9.0f trainable (%6.3f%%)  %5.1f s  loss %.3f  exact match %5.1f%%\n",
               names[k], r->trainable, r->pct, r->seconds, r->final_loss, r->acc);
        peft_trainer_free(ft);
        peft_model_free(m);
    }

    /* 4. the table and the files */
    printf("[4/4] results (exact match on %d held-out instructions)\n\n", w.n_items - w.n_train);
    printf("  %-11s %10s %8s %8s %9s %9s %8s %7s %7s %7s", "method", "trainable", "% base", "train s",
           "tokens/s", "w+opt MB", "act MB", "loss", "EM %", "% full");
    for (int f = 0; f < PEFT_N_TASKS; f++) printf(" %10s", peft_task_name(f));
    printf("\n");
    for (int k = 0; k < PEFT_N_METHODS; k++) {
        run_result *r = &runs[k];
        printf("  %-11s %10.0f %8.3f %8.1f %9.0f %9.2f %8.1f %7.3f %7.1f %7.0f", r->name, r->trainable,
               r->pct, r->seconds, r->tok_s, r->mem_mb, r->act_mb, r->final_loss, r->acc,
               runs[0].acc > 0 ? 100.0 * r->acc / runs[0].acc : 0.0);
        for (int f = 0; f < PEFT_N_TASKS; f++) printf(" %10.1f", r->acc_family[f]);
        printf("\n");
    }
    peft_model *bm;
    if (peft_model_load(&bm, path) != PEFT_OK) die(path);
    write_files(out, runs, PEFT_N_METHODS, &w, (double)peft_model_base_count(bm), pretrain_s, ema, S);
    peft_model_free(bm);
    printf("\n  wrote %s/results.md, results.json, loss.svg, tradeoff.svg (total %.0f s)\n", out,
           now_s() - t_start);
    for (int k = 0; k < PEFT_N_METHODS; k++) free(runs[k].curve);
    free(tok); free(tgt);
    peft_demo_world_free(&w);
    return 0;
}
