#include "harness.h"
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

th_state th_cur;

double th_rel_err_f(const float *a, const float *b, long n) {
    double mx = 0, md = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d;  /* NaN propagates as a failure */
        if (fabs(b[i]) > mx) mx = fabs(b[i]);
    }
    return mx > 0 ? md / mx : md;
}
double th_rel_err_fd(const float *a, const double *b, long n) {
    double mx = 0, md = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) md = d;
        if (fabs(b[i]) > mx) mx = fabs(b[i]);
    }
    return mx > 0 ? md / mx : md;
}

const char *th_fixtures(void) {
    const char *e = getenv("PEFT_FIXTURES");
    return e ? e : "tests/fixtures";
}
const char *th_shared(void) {
    static char buf[512];
    const char *e = getenv("PEFT_SHARED_DATA");
    snprintf(buf, sizeof buf, "%s", e ? e : "../shared/data");
    struct stat st;
    return stat(buf, &st) == 0 ? buf : NULL;
}
const char *th_tmp_text(const char *name, const char *text) {
    static char buf[4][700];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", th_tmpdir(), name);
    FILE *f = fopen(b, "w");
    if (f) { fputs(text, f); fclose(f); }
    return b;
}
int th_truncated_copy(const char *src, const char *dst, size_t drop) {
    unsigned char *d;
    size_t n;
    if (peft_read_file(src, &d, &n) != PEFT_OK || n < drop) return 0;
    FILE *f = fopen(dst, "wb");
    if (f) { fwrite(d, 1, n - drop, f); fclose(f); }
    free(d);
    return f != NULL;
}
const char *th_shared_file(const char *rel) {
    static char buf[4][700];
    static int next;
    if (!th_shared()) return NULL;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", th_shared(), rel);
    struct stat st;
    return stat(b, &st) == 0 ? b : NULL;
}
/* mkdtemp, not the pid: a folder left by an earlier run with the same pid (CI machines
   reuse /tmp and pids) made the CLI tests' --out folders "not empty" */
static char th__tmp[512];
const char *th_tmpdir(void) {
    if (!th__tmp[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(th__tmp, sizeof th__tmp, "%s/peft-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(th__tmp)) {
            fprintf(stderr, "cannot make a scratch folder %s\n", th__tmp);
            exit(2);
        }
    }
    return th__tmp;
}
int th_tmpdir_used(void) { return th__tmp[0] != 0; }
void th_tmpdir_remove(void) {
    if (!th__tmp[0] || getenv("PEFT_KEEP_TMP")) return;
    th_sh("rm -rf '%s'", th__tmp);
    th__tmp[0] = 0;
}
int th_read_ref(const char *path, const char *name, float **out, long *n) {
    peft_safetensors st;
    if (peft_st_open(&st, path) != PEFT_OK) return 0;
    const peft_st_entry *e = peft_st_find(&st, name);
    if (!e) { peft_st_close(&st); return 0; }
    long cnt = 1;
    for (int d = 0; d < e->ndim; d++) cnt *= (long)e->shape[d];
    *out = (float *)malloc((size_t)(cnt ? cnt : 1) * sizeof(float));
    *n = cnt;
    int ok = peft_st_read_f32(&st, e, *out, cnt) == PEFT_OK;
    peft_st_close(&st);
    return ok;
}

void th_check_hf_fixture(const char *name, th_fixture_extra extra) {
    char dir[512], ref[600];
    snprintf(dir, sizeof dir, "%s/%s", th_fixtures(), name);
    snprintf(ref, sizeof ref, "%s/ref.safetensors", dir);
    peft_model *m;
    REQUIRE_OK(peft_model_load(&m, dir));
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
    /* HF shifts labels inside the loss: position t predicts labels[t+1] */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = (int)tok_f[b * T + t];
            targets[b * T + t] = t + 1 < T ? (int)lab_f[b * T + t + 1] : -100;
        }
    peft_graph *g = peft_graph_new();
    peft_tensor *lg = peft_model_forward(m, g, tokens, B, T);
    REQUIRE(lg && lg->n == nlog, "%s: forward failed: %s", name, peft_last_error());
    double err = th_rel_err_f(lg->data, logits, nlog);
    CHECK(err < 1e-4, "%s: logits rel err %.3g (max |diff| / max |ref|)", name, err);
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
            CHECK(p == m->lm_head && m->cfg.tie_embeddings, "%s: no reference gradient for %s", name,
                  p->name);
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
    if (extra) extra(m, ref, name);
    printf("      %s: logits %.2g, loss %.2g, worst gradient %.2g (relative)\n", name, err,
           fabs(L->data[0] - loss[0]) / fabs(loss[0]), worst);
    peft_st_close(&st);
    peft_graph_free(g);
    peft_model_free(m);
    free(tok_f);
    free(lab_f);
    free(logits);
    free(loss);
    free(tokens);
    free(targets);
}

const char *th_peft_bin(void) {
    const char *b = getenv("PEFT_BIN");
    return b ? b : "build/peft";
}

int th_run_peft(char *out, size_t cap, const char *fmt, ...) {
    char cmd[2048], full[2200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "%s %s 2>&1", th_peft_bin(), cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void th_sh(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (system(cmd) != 0) fprintf(stderr, "    (command failed: %s)\n", cmd);
}

int th_builtin_kinds(peft_method_kind *out, int all) {
    int n = 0;
    for (int k = 0; k < PEFT_N_METHODS; k++)
        if (all || (k != PEFT_FULL && k != PEFT_QLORA)) out[n++] = (peft_method_kind)k;
    return n;
}

double th_data_parallel_gap(peft_model *a, peft_model *b, const peft_trainer_opts *o, const int *tok,
                            const int *tgt, int B, int T, char *why, size_t cap) {
    int keep = peft_get_threads();
    double gap = -1.0;
    peft_set_threads(2);
    peft_trainer_opts acc = *o;
    acc.grad_accum = 2;                 /* one micro-batch: its gradients stay to be read */
    peft_trainer *ta = peft_trainer_new(a, &acc), *tb = peft_trainer_new(b, &acc);
    snprintf(why, cap, "ok");
    float la = 0.0f, lb = 0.0f;
    if (peft_get_threads() != 2) snprintf(why, cap, "built without threads");
    else if (!ta || !tb) snprintf(why, cap, "trainers: %s", peft_last_error());
    else if (peft_trainer_shards(tb, B) != 2)
        snprintf(why, cap, "a step of %d sequences runs as %d shards, not 2", B, peft_trainer_shards(tb, B));
    else {
        peft_set_data_parallel(0);
        peft_status sa = peft_trainer_step(ta, tok, tgt, B, T, &la);
        peft_set_data_parallel(1);
        peft_status sb = peft_trainer_step(tb, tok, tgt, B, T, &lb);
        if (sa != PEFT_OK || sb != PEFT_OK) snprintf(why, cap, "step: %s", peft_last_error());
        else gap = fabs((double)la - lb) / fabs((double)la);
        for (int i = 0; gap >= 0.0 && i < ta->opt.n && i < tb->opt.n; i++) {
            peft_tensor *pa = ta->opt.params[i], *pb = tb->opt.params[i];
            double e = th_rel_err_f(pb->grad, pa->grad, (long)pa->n);
            if (!(e <= gap)) gap = e;
        }
    }
    peft_trainer_free(ta);
    peft_trainer_free(tb);
    peft_set_threads(keep);
    return gap;
}
