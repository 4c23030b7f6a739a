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
