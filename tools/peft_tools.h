/* peft_tools.h — the tooling around peft.h: the demo's synthetic world,
   SVG plots, a progress bar and the two probes `peft bench` reports (the
   FMA peak of a core and the peak resident set size). Used by tools/peft.c,
   tools/demo.c and examples/; the fine-tuning library itself is peft.h.

   stb style, like peft.h: include it anywhere for the declarations; in the
   one C file that defines PEFT_IMPLEMENTATION, also define
   PEFT_TOOLS_IMPLEMENTATION (the implementation shares peft.h's private
   helpers: errors, allocation, the GEMM's vector type):

       #define PEFT_IMPLEMENTATION
       #define PEFT_TOOLS_IMPLEMENTATION
       #include "tools/peft_tools.h"       // includes peft.h

   Same licence as peft.h (see its end). */
#ifndef PEFT_TOOLS_H
#define PEFT_TOOLS_H

#include "../peft.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- probes */
/* The FMA peak of one core, measured (GFLOP/s): 16 independent vector
   multiply-add chains for ~0.2 s. The denominator of MFU in `peft bench`. */
PEFTDEF double peft_fma_peak_gflops(void);
/* Peak resident set size of this process in bytes (Linux; 0 elsewhere). */
PEFTDEF size_t peft_peak_rss(void);

/* -------------------------------------------------------------- progress */
/* A one-line progress bar on f: "\r  label [####....] step/total  loss  lr
   tok/s  ETA". Ends the line when step == total. */
PEFTDEF void peft_progress(FILE *f, const char *label, int step, int total, double loss, double lr,
                           double tok_s, double elapsed_s);

/* --------------------------------------------------- plots and demo world */
/* An SVG line chart (or scatter with labels when points_only). */
typedef struct { const char *name; const double *x, *y; int n; int points_only; } peft_series;
PEFTDEF peft_status peft_svg_plot(const char *path, const char *title, const char *xlabel,
                                  const char *ylabel, int log_x, const peft_series *s, int n_series);
/* The same chart with each series' spread: lo[k][i] .. hi[k][i] drawn as a
   shaded band around a line, or as an error bar through a point (lo, hi or
   lo[k] NULL: none for that series). */
PEFTDEF peft_status peft_svg_plot_range(const char *path, const char *title, const char *xlabel,
                                        const char *ylabel, int log_x, const peft_series *s,
                                        const double *const *lo, const double *const *hi, int n_series);

/* A small synthetic world for demos and teaching: invented people with a
   city, a colour and a pet; sums of small numbers; reversing letters. A
   pre-training corpus states the facts; Alpaca-style instructions ask about
   them, split into train and held-out test items. Word-level vocabulary. */
typedef enum { PEFT_TASK_FACT = 0, PEFT_TASK_ARITH, PEFT_TASK_REVERSE, PEFT_N_TASKS } peft_task_family;
typedef struct {
    int  family;
    char instruction[96], input[64], output[64];
    int  ids[96], n_ids, n_prompt;   /* prompt + output + <eos>; the first n_prompt are the prompt */
} peft_demo_item;
typedef struct {
    char          **words;
    int             n_words;         /* ids: 0 <pad>, 1 <bos>, 2 <eos>, 3 <nl>, then words */
    int            *corpus;
    int64_t         n_corpus;
    peft_demo_item *items;           /* [0, n_train) train, then test */
    int             n_items, n_train;
} peft_demo_world;
PEFTDEF const char *peft_task_name(int family);
PEFTDEF peft_status peft_demo_world_new(peft_demo_world *w, uint64_t seed);
PEFTDEF void        peft_demo_world_free(peft_demo_world *w);
/* Word-level encode (punctuation split, "\n" → <nl>); unknown words → -1. */
PEFTDEF int         peft_demo_encode(const peft_demo_world *w, const char *text, int *ids, int max);
/* A padded SFT batch: targets are the next tokens of output + <eos> only
   (prompt and padding masked with -100); returns T. */
PEFTDEF int         peft_demo_batch(const peft_demo_item *const *items, int B, int *tokens, int *targets);
/* Greedy answer to an item's prompt == its output (exact match)? */
PEFTDEF int         peft_demo_correct(peft_model *m, peft_graph *g, const peft_demo_item *it);

#ifdef __cplusplus
}
#endif
#endif /* PEFT_TOOLS_H */

#ifdef PEFT_TOOLS_IMPLEMENTATION
#ifndef PEFT_TOOLS__IMPLEMENTED
#define PEFT_TOOLS__IMPLEMENTED
#ifndef PEFT__IMPLEMENTED
#error "peft_tools.h: define PEFT_TOOLS_IMPLEMENTATION in the file that defines PEFT_IMPLEMENTATION"
#endif

/* ---- probes ------------------------------------------------------------------
   The FMA peak runs the GEMM's own vector type (peft__vf: 16, 8 or 4 floats
   by ISA) with the micro-kernel's contraction attributes, so that it
   measures the ceiling that kernel can reach. */
PEFT__FMA_KERNEL static double peft__fma_chains(long iters) {
    PEFT__FMA_PRAGMA
    float seed = (float)(iters & 1) * 1e-3f + 0.5f;
    peft__vf acc[16];
    peft__vf m = PEFT__BCAST(0.999999f);
    peft__vf c = PEFT__BCAST(1e-7f);
    for (int i = 0; i < 16; i++)
        acc[i] = PEFT__BCAST(seed + (float)i);
    for (long k = 0; k < iters; k++)
        for (int i = 0; i < 16; i++)
            acc[i] = acc[i] * m + c;
    float sum = 0.0f;
    for (int i = 0; i < 16; i++)
        sum += acc[i][0];
    return (double)sum;
}

static double peft_tools__seconds(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

PEFTDEF double peft_fma_peak_gflops(void) {
    long iters = 1 << 16;
    double best = 0.0;
    volatile double sink = 0.0;
    for (int rep = 0; rep < 6; rep++) {
        double t0 = peft_tools__seconds();
        sink += peft__fma_chains(iters);
        double t = peft_tools__seconds() - t0;
        if (t < 0.03) {                     /* too short to time: twice the work, same rep */
            iters *= 2;
            rep--;
            continue;
        }
        double g = 2.0 * 16 * PEFT__VW * (double)iters / t / 1e9;
        if (g > best) best = g;
    }
    (void)sink;
    return best;
}

PEFTDEF size_t peft_peak_rss(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = (size_t)strtoull(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb * 1024;
}

/* ---- progress ---------------------------------------------------------------- */
PEFTDEF void peft_progress(FILE *f, const char *label, int step, int total, double loss, double lr,
                           double tok_s, double elapsed_s) {
    int width = 24;
    int fill = total > 0 ? (int)((int64_t)step * width / total) : width;
    double eta = step > 0 ? elapsed_s / step * (total - step) : 0;
    char bar[32];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(f, "\r  %-11s [%s] %5d/%-5d loss %7.4f", label, bar, step, total, loss);
    if (lr > 0) fprintf(f, "  lr %.2e", lr);
    fprintf(f, "  %7.0f tok/s  ETA %2d:%02d ", tok_s, (int)eta / 60, (int)eta % 60);
    if (step >= total) fputc('\n', f);
    fflush(f);
}

/* ---- SVG --------------------------------------------------------------------------- */
static double peft__nice_step(double span) {
    double s = pow(10.0, floor(log10(span > 0 ? span : 1.0)));
    double r = span / s;
    return r > 5 ? 2 * s : r > 2 ? s : r > 1 ? 0.5 * s : 0.2 * s;
}

/* x of a point on the plot's axis: log10 on a log axis (values ≤ 0 drawn at 1) */
static double peft__plot_x(const peft_series *s, int i, int log_x) {
    return log_x ? log10(s->x[i] > 0 ? s->x[i] : 1) : s->x[i];
}

PEFTDEF peft_status peft_svg_plot(const char *path, const char *title, const char *xlabel,
                                  const char *ylabel, int log_x, const peft_series *s, int n_series) {
    return peft_svg_plot_range(path, title, xlabel, ylabel, log_x, s, NULL, NULL, n_series);
}

PEFTDEF peft_status peft_svg_plot_range(const char *path, const char *title, const char *xlabel,
                                        const char *ylabel, int log_x, const peft_series *s,
                                        const double *const *lo, const double *const *hi, int n_series) {
    static const char *colors[] = { "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                    "#9467bd", "#8c564b", "#e377c2", "#17becf" };
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int k = 0; k < n_series; k++)
        for (int i = 0; i < s[k].n; i++) {
            double x = peft__plot_x(&s[k], i, log_x);
            double y = s[k].y[i];
            if (!isfinite(x) || !isfinite(y)) continue;
            x0 = fmin(x0, x);
            x1 = fmax(x1, x);
            y0 = fmin(y0, y);
            y1 = fmax(y1, y);
            if (lo && hi && lo[k] && hi[k] && isfinite(lo[k][i]) && isfinite(hi[k][i])) {
                y0 = fmin(y0, lo[k][i]);
                y1 = fmax(y1, hi[k][i]);
            }
        }
    if (!(x1 >= x0)) {                          /* no finite point: a unit square */
        x0 = 0;
        x1 = 1;
        y0 = 0;
        y1 = 1;
    }
    if (x1 == x0) {
        x0 -= 1;
        x1 += 1;
    }
    if (y1 == y0) {
        y0 -= 1;
        y1 += 1;
    }
    double ypad = 0.05 * (y1 - y0);
    y0 -= ypad;
    y1 += ypad;
    if (log_x) {                                /* whole decades */
        x0 = floor(x0);
        x1 = ceil(x1);
        if (x1 == x0) x1 += 1;
    }
    /* canvas W×H; plot area inset L, R, T and Bm, pw×ph */
    const double W = 760, H = 440, L = 70, R = 190, T = 40, Bm = 55;
    const double pw = W - L - R, ph = H - T - Bm;
#define PEFT__SX(x) (L + ((x) - x0) / (x1 - x0) * pw)
#define PEFT__SY(y) (T + ph - ((y) - y0) / (y1 - y0) * ph)
    peft__sb b = { 0, 0, 0, 0 };
    peft__sbf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                  "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    peft__sbf(&b, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
                  "<text x=\"%.0f\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">", L + pw / 2);
    for (const char *c = title; *c; c++)
        peft__sbf(&b, *c == '<' ? "&lt;" : *c == '&' ? "&amp;" : "%c", *c);
    peft__sbf(&b, "</text>\n<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
                  "stroke=\"#444\"/>\n", L, T, pw, ph);
    double ys = peft__nice_step(y1 - y0);
    for (double y = ceil(y0 / ys) * ys; y <= y1; y += ys)
        peft__sbf(&b, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                      "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                  L, L + pw, PEFT__SY(y), PEFT__SY(y), L - 6, PEFT__SY(y) + 4, fabs(y) < 1e-12 ? 0.0 : y);
    double xs = log_x ? 1.0 : peft__nice_step(x1 - x0);
    for (double x = ceil(x0 / xs) * xs; x <= x1 + 1e-9; x += xs)
        peft__sbf(&b, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                      "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
                  PEFT__SX(x), PEFT__SX(x), T, T + ph, PEFT__SX(x), T + ph + 16, log_x ? pow(10.0, x) : x);
    peft__sbf(&b, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">%s%s</text>\n", L + pw / 2, H - 12,
              xlabel, log_x ? " (log scale)" : "");
    peft__sbf(&b, "<text transform=\"translate(16,%.0f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n",
              T + ph / 2, ylabel);
    for (int k = 0; k < n_series; k++) {
        const char *col = colors[k % 8];
        int ranged = lo && hi && lo[k] && hi[k];
        if (ranged && s[k].points_only) {          /* error bars with caps */
            for (int i = 0; i < s[k].n; i++) {
                double x = PEFT__SX(peft__plot_x(&s[k], i, log_x));
                double ya = PEFT__SY(lo[k][i]);
                double yb = PEFT__SY(hi[k][i]);
                peft__sbf(&b, "<path d=\"M%.1f %.1fV%.1fM%.1f %.1fH%.1fM%.1f %.1fH%.1f\" stroke=\"%s\" "
                              "stroke-width=\"1.4\"/>\n", x, ya, yb, x - 5, ya, x + 5, x - 5, yb, x + 5, col);
            }
        } else if (ranged && s[k].n > 0) {         /* a band: hi left to right, then lo back */
            peft__sbf(&b, "<polygon fill=\"%s\" fill-opacity=\"0.18\" stroke=\"none\" points=\"", col);
            for (int i = 0; i < s[k].n; i++)
                peft__sbf(&b, "%.1f,%.1f ", PEFT__SX(peft__plot_x(&s[k], i, log_x)), PEFT__SY(hi[k][i]));
            for (int i = s[k].n - 1; i >= 0; i--)
                peft__sbf(&b, "%.1f,%.1f ", PEFT__SX(peft__plot_x(&s[k], i, log_x)), PEFT__SY(lo[k][i]));
            peft__sbf(&b, "\"/>\n");
        }
        if (s[k].points_only) {
            for (int i = 0; i < s[k].n; i++) {
                double x = peft__plot_x(&s[k], i, log_x);
                peft__sbf(&b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"/>\n", PEFT__SX(x),
                          PEFT__SY(s[k].y[i]), col);
            }
        } else {
            peft__sbf(&b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.6\" points=\"", col);
            for (int i = 0; i < s[k].n; i++) {
                double x = peft__plot_x(&s[k], i, log_x);
                if (isfinite(s[k].y[i])) peft__sbf(&b, "%.1f,%.1f ", PEFT__SX(x), PEFT__SY(s[k].y[i]));
            }
            peft__sbf(&b, "\"/>\n");
        }
        peft__sbf(&b, "<rect x=\"%.0f\" y=\"%.0f\" width=\"14\" height=\"4\" fill=\"%s\"/>"
                      "<text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
                  L + pw + 14, T + 10 + 18.0 * k, col, L + pw + 34, T + 15 + 18.0 * k, s[k].name);
    }
    peft__sbf(&b, "</svg>\n");
#undef PEFT__SX
#undef PEFT__SY
    peft_status st = b.oom ? peft__fail(PEFT_ERR_NOMEM, "no memory for the plot %s", path)
                           : peft_write_file_atomic(path, b.s, b.n);
    PEFT_FREE(b.s);
    return st;
}

/* ---- the demo world --------------------------------------------------------------- */
static const char *const peft__cities[8] = { "amberton", "birchwick", "cedarfall", "dunmore",
                                             "elmshade", "fernhollow", "glenport", "hazelby" };
static const char *const peft__colors[8] = { "red", "blue", "green", "yellow",
                                             "black", "white", "orange", "purple" };
static const char *const peft__pets[8] = { "cat", "dog", "bird", "fish", "frog", "horse", "mouse", "goat" };
static const char *const peft__letters[8] = { "a", "b", "c", "d", "e", "f", "g", "h" };
static const char *const peft__task_names[PEFT_N_TASKS] = { "facts", "arithmetic", "reverse" };

PEFTDEF const char *peft_task_name(int f) {
    return f >= 0 && f < PEFT_N_TASKS ? peft__task_names[f] : "?";
}

static int peft__word_id(peft_demo_world *w, const char *word, int add) {
    for (int i = 0; i < w->n_words; i++)
        if (strcmp(w->words[i], word) == 0) return i;
    if (!add) return -1;
    char **nw = (char **)PEFT_REALLOC(w->words, sizeof(char *) * (size_t)(w->n_words + 1));
    if (!nw) return -1;
    w->words = nw;
    w->words[w->n_words] = peft__strdup(word);
    return w->words[w->n_words] ? w->n_words++ : -1;
}

/* split into words: spaces separate, . , ? : are words of their own, "\n" is <nl> */
static int peft__demo_tokens(peft_demo_world *w, const char *text, int *ids, int max, int add) {
    int n = 0;
    char word[64];
    for (const char *p = text; *p && n < max;) {
        if (*p == ' ') {
            p++;
            continue;
        }
        int len = 0;
        if (*p == '\n') {
            ids[n++] = 3;                       /* <nl> */
            p++;
            continue;
        }
        if (strchr(".,?:", *p)) word[len++] = *p++;
        else
            while (*p && *p != ' ' && *p != '\n' && !strchr(".,?:", *p) && len < 63)
                word[len++] = *p++;
        word[len] = 0;
        ids[n++] = peft__word_id(w, word, add);
    }
    return n;
}

PEFTDEF int peft_demo_encode(const peft_demo_world *w, const char *text, int *ids, int max) {
    return peft__demo_tokens((peft_demo_world *)(uintptr_t)w, text, ids, max, 0);
}

static void peft__corpus_add(peft_demo_world *w, const char *sentence, int64_t *cap) {
    int ids[128];
    int n = peft__demo_tokens(w, sentence, ids, 128, 1);
    if (w->n_corpus + n + 1 > *cap) {
        *cap = (*cap + n + 1) * 2;
        int *nc = (int *)PEFT_REALLOC(w->corpus, sizeof(int) * (size_t)*cap);
        if (!nc) return;
        w->corpus = nc;
    }
    memcpy(w->corpus + w->n_corpus, ids, sizeof(int) * (size_t)n);
    w->n_corpus += n;
}

/* a person's fact of kind 0 (city), 1 (colour) or 2 (pet) */
static const char *peft__fact(int kind, int city, int color, int pet) {
    return kind == 0 ? peft__cities[city] : kind == 1 ? peft__colors[color] : peft__pets[pet];
}

static void peft__shuffle(peft_rng *r, int *a, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(peft_rng_u64(r) % (uint64_t)(i + 1));
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

PEFTDEF peft_status peft_demo_world_new(peft_demo_world *w, uint64_t seed) {
    enum { N_PEOPLE = 32, N_SUMS = 10, N_LET = 6, N_REV = N_LET * N_LET * N_LET };
    static const char *const syl[16] = { "ka", "zu", "mi", "ro", "te", "lo", "vi", "na",
                                         "sho", "ri", "pa", "du", "fe", "gi", "bo", "ya" };
    memset(w, 0, sizeof *w);
    const char *special[4] = { "<pad>", "<bos>", "<eos>", "<nl>" };
    for (int i = 0; i < 4; i++)
        peft__word_id(w, special[i], 1);
    peft_rng r;
    peft_rng_seed(&r, seed);
    char names[N_PEOPLE][16];
    int city[N_PEOPLE], color[N_PEOPLE], pet[N_PEOPLE];
    for (int i = 0; i < N_PEOPLE; i++) {
        int unique;
        do {
            /* three draws as one call's arguments, whose order C leaves to the
               compiler: GCC and clang build different worlds. Kept as one call
               so that GCC's stays the one the README's demo table shows */
            snprintf(names[i], 16, "%s%s%s", syl[peft_rng_u64(&r) % 16], syl[peft_rng_u64(&r) % 16],
                     syl[peft_rng_u64(&r) % 16]);
            unique = 1;
            for (int j = 0; j < i; j++)
                if (!strcmp(names[i], names[j])) unique = 0;
        } while (!unique);
        city[i] = (int)(peft_rng_u64(&r) % 8);
        color[i] = (int)(peft_rng_u64(&r) % 8);
        pet[i] = (int)(peft_rng_u64(&r) % 8);
    }
    /* the corpus: every fact several times, as a statement and as the answer
       to a question (so that questions can be answered at all: a model that
       only saw statements rarely learns to retrieve them from questions), in
       random order */
    enum { N_COPY = 240, N_SENT = N_PEOPLE * 3 * 4 + N_SUMS * N_SUMS * 3 + N_REV * 2 + N_COPY };
    int order[N_SENT];
    for (int i = 0; i < N_SENT; i++)
        order[i] = i;
    peft__shuffle(&r, order, N_SENT);
    int64_t cap = 0;
    char buf[1024];
    for (int k = 0; k < N_SENT; k++) {
        int s = order[k];
        if (s < N_PEOPLE * 12) {
            int p = (s / 3) % N_PEOPLE;
            int kind = s % 3;
            int question = (s / (3 * N_PEOPLE)) % 2;
            static const char *const stmt[3] = { "%s lives in %s .", "%s likes %s .", "%s has a %s ." };
            static const char *const ask[3] = { "Where does %s live ? %s .",
                                                "Which colour does %s like ? %s .",
                                                "What pet does %s have ? %s ." };
            snprintf(buf, sizeof buf, (question ? ask : stmt)[kind], names[p],
                     peft__fact(kind, city[p], color[p], pet[p]));
        } else if (s < N_PEOPLE * 12 + N_SUMS * N_SUMS * 3) {
            int q = (s - N_PEOPLE * 12) % (N_SUMS * N_SUMS);
            int a = q / N_SUMS;
            int b = q % N_SUMS;
            snprintf(buf, sizeof buf, "%d plus %d is %d .", a, b, a + b);
        } else if (s >= N_SENT - N_COPY) {
            /* instruction-shaped text of another kind (copying letters), as a
               real corpus has some: the base meets the Alpaca template and
               <bos>/<eos> before fine-tuning, like any pre-trained LLM */
            char in[96] = "", prompt[512];
            for (int t = 0; t < 3; t++) {            /* any kind of word: copying must not depend on it */
                char word[24];
                int kind = (int)(peft_rng_u64(&r) % 4);
                if (kind == 0) snprintf(word, sizeof word, "%s", names[peft_rng_u64(&r) % N_PEOPLE]);
                else if (kind == 1)
                    snprintf(word, sizeof word, "%d", (int)(peft_rng_u64(&r) % (2 * N_SUMS - 1)));
                else if (kind == 2)
                    snprintf(word, sizeof word, "%s", peft__letters[peft_rng_u64(&r) % N_LET]);
                else          /* two draws in one expression: kept whole, as the names above */
                    snprintf(word, sizeof word, "%s",
                             (peft_rng_u64(&r) & 1 ? peft__cities : peft__pets)[peft_rng_u64(&r) % 8]);
                snprintf(in + strlen(in), sizeof in - strlen(in), "%s%s", t ? " " : "", word);
            }
            peft_alpaca_prompt("Repeat the words.", in, prompt, sizeof prompt);
            snprintf(buf, sizeof buf, "<bos> %s %s <eos>", prompt, in);
        } else {
            int q = (s - N_PEOPLE * 12 - N_SUMS * N_SUMS * 3) % N_REV;
            int x = q / (N_LET * N_LET);
            int y = (q / N_LET) % N_LET;
            int z = q % N_LET;
            snprintf(buf, sizeof buf, "%s %s %s reversed is %s %s %s .", peft__letters[x], peft__letters[y],
                     peft__letters[z], peft__letters[z], peft__letters[y], peft__letters[x]);
        }
        peft__corpus_add(w, buf, &cap);
    }
    /* instructions: per family, shuffled, split train / test */
    int per_family_train[PEFT_N_TASKS] = { 64, 64, 96 };
    int per_family_test = 32;
    int total = 64 + 64 + 96 + 3 * per_family_test;
    w->items = (peft_demo_item *)peft__calloc(sizeof(peft_demo_item) * (size_t)total);
    if (!w->items || !w->corpus) {
        peft_demo_world_free(w);
        return peft__fail(PEFT_ERR_NOMEM, "no memory for the demo world");
    }
    peft_demo_item *train = w->items;
    peft_demo_item *test = w->items + 64 + 64 + 96;
    int nt = 0;
    int ne = 0;
    for (int f = 0; f < PEFT_N_TASKS; f++) {
        int pool = f == PEFT_TASK_FACT ? N_PEOPLE * 3 : f == PEFT_TASK_ARITH ? N_SUMS * N_SUMS : N_REV;
        int *idx = (int *)PEFT_MALLOC(sizeof(int) * (size_t)pool);
        if (!idx) {
            peft_demo_world_free(w);
            return peft__fail(PEFT_ERR_NOMEM, "no memory for the demo world");
        }
        for (int i = 0; i < pool; i++)
            idx[i] = i;
        peft__shuffle(&r, idx, pool);
        for (int k = 0; k < per_family_train[f] + per_family_test; k++) {
            peft_demo_item *it = k < per_family_train[f] ? &train[nt++] : &test[ne++];
            int q = idx[k];
            it->family = f;
            if (f == PEFT_TASK_FACT) {
                int p = q / 3;
                int kind = q % 3;
                static const char *const ask[3] = { "Where does %s live?", "Which colour does %s like?",
                                                    "What pet does %s have?" };
                snprintf(it->instruction, sizeof it->instruction, ask[kind], names[p]);
                /* answers restate the fact as the corpus does: a small model then
                   copies the question and completes it from what it learned */
                static const char *const say[3] = { "%s lives in %s", "%s likes %s", "%s has a %s" };
                snprintf(it->output, sizeof it->output, say[kind], names[p],
                         peft__fact(kind, city[p], color[p], pet[p]));
            } else if (f == PEFT_TASK_ARITH) {
                snprintf(it->instruction, sizeof it->instruction, "Add the two numbers.");
                snprintf(it->input, sizeof it->input, "%d plus %d", q / N_SUMS, q % N_SUMS);
                snprintf(it->output, sizeof it->output, "%d plus %d is %d", q / N_SUMS, q % N_SUMS,
                         q / N_SUMS + q % N_SUMS);
            } else {
                int x = q / (N_LET * N_LET);
                int y = (q / N_LET) % N_LET;
                int z = q % N_LET;
                snprintf(it->instruction, sizeof it->instruction, "Reverse the letters.");
                snprintf(it->input, sizeof it->input, "%s %s %s", peft__letters[x], peft__letters[y],
                         peft__letters[z]);
                snprintf(it->output, sizeof it->output, "%s %s %s reversed is %s %s %s", peft__letters[x],
                         peft__letters[y], peft__letters[z], peft__letters[z], peft__letters[y],
                         peft__letters[x]);
            }
            peft_alpaca_prompt(it->instruction, it->input, buf, sizeof buf);
            it->ids[0] = 1;                                              /* <bos> */
            it->n_prompt = 1 + peft__demo_tokens(w, buf, it->ids + 1, 80, 1);
            it->n_ids = it->n_prompt + peft__demo_tokens(w, it->output, it->ids + it->n_prompt, 12, 1);
            it->ids[it->n_ids++] = 2;                                    /* <eos> */
        }
        PEFT_FREE(idx);
    }
    w->n_train = nt;
    w->n_items = nt + ne;
    return PEFT_OK;
}

PEFTDEF void peft_demo_world_free(peft_demo_world *w) {
    for (int i = 0; i < w->n_words; i++)
        PEFT_FREE(w->words[i]);
    PEFT_FREE(w->words);
    PEFT_FREE(w->corpus);
    PEFT_FREE(w->items);
    memset(w, 0, sizeof *w);
}

PEFTDEF int peft_demo_batch(const peft_demo_item *const *items, int B, int *tokens, int *targets) {
    int T = 0;
    for (int b = 0; b < B; b++)
        if (items[b]->n_ids - 1 > T) T = items[b]->n_ids - 1;
    for (int b = 0; b < B; b++) {
        const peft_demo_item *it = items[b];
        for (int t = 0; t < T; t++) {
            int in = t < it->n_ids - 1;
            tokens[b * T + t] = in ? it->ids[t] : 0;
            targets[b * T + t] = in && t + 1 >= it->n_prompt ? it->ids[t + 1] : -100;
        }
    }
    return T;
}

PEFTDEF int peft_demo_correct(peft_model *m, peft_graph *g, const peft_demo_item *it) {
    int out[16];
    int want = it->n_ids - it->n_prompt;
    int n = peft_generate_greedy(m, g, it->ids, it->n_prompt, want, 2, out);
    return n == want && memcmp(out, it->ids + it->n_prompt, sizeof(int) * (size_t)want) == 0;
}

#endif /* PEFT_TOOLS__IMPLEMENTED */
#endif /* PEFT_TOOLS_IMPLEMENTATION */
