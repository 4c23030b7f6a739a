/* lora_math — what LoRA is, in numbers.

   1. ΔW = (α/r)·B·A: the adapter's output equals the merged weight's.
   2. How few parameters that is for real LLaMA shapes.
   3. Merging into the model gives the same logits (and unmerging restores).
   4. After training, ΔW has rank ≤ r: its singular values show it.

   build/examples/lora_math */
#define PEFT_IMPLEMENTATION
#include "../peft.h"
#include <stdio.h>
#include <stdlib.h>
#include <math.h>

/* singular values of a rows×cols matrix: eigenvalues of MᵀM by cyclic Jacobi */
static void singular_values(const float *M, int rows, int cols, double *sv) {
    double *a = calloc((size_t)cols * cols, sizeof(double));
    for (int i = 0; i < cols; i++)
        for (int j = 0; j < cols; j++)
            for (int k = 0; k < rows; k++) a[i * cols + j] += (double)M[k * cols + i] * M[k * cols + j];
    for (int sweep = 0; sweep < 30; sweep++)
        for (int p = 0; p < cols; p++)
            for (int q = p + 1; q < cols; q++) {
                double apq = a[p * cols + q];
                if (fabs(apq) < 1e-300) continue;
                double th = 0.5 * atan2(2 * apq, a[q * cols + q] - a[p * cols + p]), c = cos(th), s = sin(th);
                for (int k = 0; k < cols; k++) {          /* rotate columns p, q then rows p, q */
                    double kp = a[k * cols + p], kq = a[k * cols + q];
                    a[k * cols + p] = c * kp - s * kq; a[k * cols + q] = s * kp + c * kq;
                }
                for (int k = 0; k < cols; k++) {
                    double pk = a[p * cols + k], qk = a[q * cols + k];
                    a[p * cols + k] = c * pk - s * qk; a[q * cols + k] = s * pk + c * qk;
                }
            }
    for (int i = 0; i < cols; i++) sv[i] = sqrt(fmax(a[i * cols + i], 0));
    for (int i = 0; i < cols; i++)                        /* sort descending */
        for (int j = i + 1; j < cols; j++) if (sv[j] > sv[i]) { double t = sv[i]; sv[i] = sv[j]; sv[j] = t; }
    free(a);
}

int main(void) {
    printf("1. LoRA on one layer: y = W x + (alpha/r) B (A x)\n");
    enum { IN = 48, OUT = 40, R = 4, N = 3 };
    peft_rng rng;
    peft_rng_seed(&rng, 1);
    int64_t sx[2] = { N, IN }, sw[2] = { OUT, IN }, sa[2] = { R, IN }, sb[2] = { OUT, R };
    peft_tensor *x = peft_param_new("x", 2, sx), *W = peft_param_new("W", 2, sw);
    peft_tensor *A = peft_param_new("A", 2, sa), *B = peft_param_new("B", 2, sb),
                *Wm = peft_param_new("W'", 2, sw);
    peft_tensor *all[4] = { x, W, A, B };
    for (int t = 0; t < 4; t++)
        for (int64_t i = 0; i < all[t]->n; i++) all[t]->data[i] = peft_rng_normal(&rng);
    float alpha = 8, s = alpha / R;
    peft_graph *g = peft_graph_new();
    peft_tensor *y1 = peft_lora_linear(g, x, W, A, B, s, 0, NULL);
    for (int i = 0; i < OUT * IN; i++) Wm->data[i] = W->data[i];
    float sB[OUT * R];
    for (int i = 0; i < OUT * R; i++) sB[i] = s * B->data[i];
    peft_gemm(0, 0, OUT, IN, R, sB, R, A->data, IN, 1.0f, Wm->data, IN);     /* W' = W + s·B·A */
    peft_tensor *y2 = peft_linear(g, x, Wm);
    double md = 0;
    for (int i = 0; i < N * OUT; i++) md = fmax(md, fabs(y1->data[i] - y2->data[i]));
    printf("   max |adapter output - merged output| = %.2e  (float rounding only)\n", md);
    printf("   the adapter stores %d numbers instead of a %d-number update\n\n", R * (IN + OUT), IN * OUT);

    printf("2. trainable parameters, LoRA r=8 on q_proj and v_proj (PEFT's default)\n");
    const char *presets[] = { "llama-7b", "llama2-13b", "llama2-70b", "llama3-8b", "smollm-135m" };
    for (int i = 0; i < 5; i++) {
        peft_config c;
        peft_config_preset(&c, presets[i]);
        peft_method m = peft_method_defaults(PEFT_LORA);
        double full = (double)peft_config_param_count(&c), lora = (double)peft_method_param_count(&c, &m);
        printf("   %-12s %15.0f -> %10.0f  (%.4f%%, %5.0fx fewer)\n", presets[i], full, lora,
               100 * lora / full, full / lora);
    }

    printf("\n3. merge and unmerge on a whole model\n");
    peft_config c;
    peft_config_preset(&c, "tiny");
    c.dim = 64;
    c.hidden_dim = 128;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 16;
    c.vocab_size = 64;
    peft_model *m;
    peft_model_new(&m, &c, 1, 3);
    /* a wider head, so the task is learnable */
    for (int64_t i = 0; i < m->embed->n; i++) m->embed->data[i] *= 10;
    peft_method lora = peft_method_defaults(PEFT_LORA);
    lora.lora_r = R; lora.lora_alpha = 8;
    peft_attach(m, &lora);
    int tok[4 * 16], tgt[4 * 16];
    for (int i = 0; i < 64; i++) { tok[i] = (i * 5) % 64; tgt[i] = (tok[i] * 7 + 1) % 64; }
    peft_trainer_opts o = peft_trainer_defaults();
    o.lr = 1e-2f;
    peft_trainer *tr = peft_trainer_new(m, &o);
    float loss = 0;
    for (int step = 0; step < 60; step++) peft_trainer_step(tr, tok, tgt, 4, 16, &loss);
    printf("   trained 60 steps: loss %.3f\n", loss);
    peft_graph_reset(g);
    peft_tensor *l1 = peft_model_forward(m, g, tok, 4, 16);
    int64_t n1 = l1->n;                  /* l1 lives in the graph's arena: gone at the next reset */
    float *keep = malloc(sizeof(float) * n1), *w0 = malloc(sizeof(float) * m->layers[0].lin[PEFT_Q].w->n);
    for (int64_t i = 0; i < n1; i++) keep[i] = l1->data[i];
    for (int64_t i = 0; i < m->layers[0].lin[PEFT_Q].w->n; i++) w0[i] = m->layers[0].lin[PEFT_Q].w->data[i];
    peft_lora_merge(m);
    peft_graph_reset(g);
    peft_tensor *l2 = peft_model_forward(m, g, tok, 4, 16);
    md = 0;
    for (int64_t i = 0; i < n1; i++) md = fmax(md, fabs(keep[i] - l2->data[i]));
    printf("   merged vs unmerged logits: max diff %.2e (zero extra latency after merging)\n", md);
    peft_lora_unmerge(m);
    double wd = 0;
    for (int64_t i = 0; i < m->layers[0].lin[PEFT_Q].w->n; i++)
        wd = fmax(wd, fabs(w0[i] - m->layers[0].lin[PEFT_Q].w->data[i]));
    printf("   unmerge restores W: max diff %.2e\n\n", wd);

    printf("4. rank of the learned update dW = (alpha/r) B A (layer 0, q_proj, r = %d)\n", R);
    peft_linear_site *S = &m->layers[0].lin[PEFT_Q];
    int out = (int)S->w->shape[0], in = (int)S->w->shape[1];
    float *dW = calloc((size_t)out * in, sizeof(float)), *sb2 = malloc(sizeof(float) * out * R);
    for (int i = 0; i < out * R; i++) sb2[i] = S->lora_scale * S->lora_B->data[i];
    peft_gemm(0, 0, out, in, R, sb2, R, S->lora_A->data, in, 0.0f, dW, in);
    double sv[64];
    singular_values(dW, out, in, sv);
    printf("   singular values:");
    for (int i = 0; i < 8; i++) printf(" %.2e", sv[i]);
    printf(" ...\n   the first %d carry the update; from the %dth on they are rounding noise (%.1e)\n", R,
           R + 1, sv[R]);
    free(keep); free(w0); free(dW); free(sb2);
    peft_trainer_free(tr);
    peft_model_free(m);
    peft_graph_free(g);
    for (int t = 0; t < 4; t++) peft_param_free(all[t]);
    peft_param_free(Wm);
    return 0;
}
