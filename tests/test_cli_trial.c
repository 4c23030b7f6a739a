/* What a new user's first runs of `peft train` found: a finished run
   resumed, the clock of a resumed log, the seed's JSON type, the default
   method on a GGUF model, and the wording of a refused value. */
#include "harness.h"
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int have_bin(void) {
    FILE *probe = fopen(th_peft_bin(), "rb");
    if (probe) fclose(probe);
    return probe != NULL;
}

/* elapsed_s of each step line of a log.jsonl, by step (1-based); returns the count of step lines */
static int log_elapsed(const char *path, double *el, int cap) {
    unsigned char *text;
    size_t n;
    int lines = 0;
    if (peft_read_file(path, &text, &n) != PEFT_OK) return 0;
    for (char *line = (char *)text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        size_t len = next ? (size_t)(next - line) : strlen(line);
        if (next) next++;
        peft_json *j;
        if (peft_json_parse(&j, line, len, path) != PEFT_OK) continue;
        const peft_json *s = peft_json_get(j, "step"), *e = peft_json_get(j, "elapsed_s");
        if (s && e && s->number >= 1 && s->number <= cap) {
            el[(int)s->number - 1] = e->number;
            lines++;
        }
        peft_json_free(j);
    }
    free(text);
    return lines;
}

static int same_bytes(const char *a, const char *b) {
    unsigned char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = peft_read_file(a, &x, &nx) == PEFT_OK && peft_read_file(b, &y, &ny) == PEFT_OK && nx == ny &&
               !memcmp(x, y, nx);
    free(x);
    free(y);
    return same;
}

TEST(test_cli_trial_resume_and_config) {
    static char out[1 << 16];
    if (!have_bin()) SKIP("%s not built", th_peft_bin());
    char tokp[700], model[512], data[512], run[512], crash[512], path[700], copy[700];
    snprintf(tokp, sizeof tokp, "%s/hf_tok/gpt2.json", th_fixtures());
    snprintf(model, sizeof model, "%s/trial800", th_tmpdir());
    snprintf(data, sizeof data, "%s/alpaca/data.json", th_fixtures());
    peft_config c;
    peft_config_preset(&c, "tiny");
    c.vocab_size = 800;
    c.dim = 32;
    c.hidden_dim = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.max_seq_len = 256;
    peft_model *m;
    REQUIRE_OK(peft_model_new(&m, &c, 1, 1));
    REQUIRE_OK(peft_model_save(m, model));
    peft_model_free(m);
    const char *common = "--method lora --batch 2 --seq 192 --max-steps 4 --save-every 2 --seed 5";
    snprintf(run, sizeof run, "%s/trial_run", th_tmpdir());
    REQUIRE(th_run_peft(out, sizeof out, "train --model %s --tokenizer %s --data %s %s --out %s", model, tokp,
                        data, common, run) == 0,
            "run: %s", out);

    /* the seed is a number in train_config.json, as every other number */
    snprintf(path, sizeof path, "%s/train_config.json", run);
    unsigned char *cfg = NULL;
    size_t n = 0;
    REQUIRE_OK(peft_read_file(path, &cfg, &n));
    CHECK(strstr((char *)cfg, "\"seed\": 5") != NULL, "seed not written as a number:\n%s", (char *)cfg);
    free(cfg);

    /* resuming a finished run says so and changes nothing (it used to redo the last step) */
    snprintf(path, sizeof path, "%s/log.jsonl", run);
    snprintf(copy, sizeof copy, "%s/trial_log_before", th_tmpdir());
    th_sh("cp '%s' '%s'", path, copy);
    int rc = th_run_peft(out, sizeof out, "train --resume %s", run);
    CHECK(rc == 0 && strstr(out, "the run is finished (4 of 4 steps") && !strstr(out, "step    4/4"),
          "resume of a finished run (%d): %s", rc, out);
    CHECK(same_bytes(path, copy), "resuming a finished run rewrote its log");

    /* elapsed_s continues across a resume: a run killed after step 3 and resumed at 2 */
    snprintf(crash, sizeof crash, "%s/trial_crash", th_tmpdir());
    char cmd[3000];
    snprintf(cmd, sizeof cmd,
             "PEFT_CRASH_AFTER_STEP=3 %s train --model %s --tokenizer %s --data %s %s --out %s "
             "> /dev/null 2>&1",
             th_peft_bin(), model, tokp, data, common, crash);
    CHECK(system(cmd) != 0, "the killed run exited cleanly");
    CHECK(th_run_peft(out, sizeof out, "train --resume %s", crash) == 0 && strstr(out, "resuming from"),
          "resume: %s", out);
    double el[4] = { 0, 0, 0, 0 };
    snprintf(path, sizeof path, "%s/log.jsonl", crash);
    CHECK(log_elapsed(path, el, 4) == 4, "log.jsonl has not 4 step lines");
    for (int s = 1; s < 4; s++)
        CHECK(el[s] >= el[s - 1], "elapsed_s goes back after the resume: step %d %.4f, step %d %.4f", s,
              el[s - 1], s + 1, el[s]);
}

/* A refused value names the flag and the value; --help says which method is the default where. */
TEST(test_cli_trial_messages) {
    static char out[1 << 16];
    if (!have_bin()) SKIP("%s not built", th_peft_bin());
    char data[512];
    snprintf(data, sizeof data, "%s/alpaca/data.json", th_fixtures());
    struct { const char *args, *want; } cases[] = {
        { "--lr abc", "peft train: --lr: 'abc' is not a number > 0" },
        { "--lr -1", "peft train: --lr: '-1' is not a number > 0" },
        { "--seed x1", "peft train: --seed: 'x1' is not a whole number >= 0" },
        { "--batch 0", "peft train: --batch: '0' is not a whole number from 1 to 256" },
        { "--schedule cos", "peft train: --schedule: 'cos' is not constant, cosine or linear" },
        { "--optim sgd", "peft train: --optim: 'sgd' is not adamw, paged or 8bit" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = th_run_peft(out, sizeof out, "train --preset tiny --data %s --no-save %s", data,
                             cases[i].args);
        CHECK(rc == 2 && strstr(out, cases[i].want), "%s -> %d: %s", cases[i].args, rc, out);
    }
    CHECK(th_run_peft(out, sizeof out, "generate --model x --top-p 2") == 2 &&
              strstr(out, "peft generate: --top-p: '2' is not a number in (0, 1]"),
          "generate --top-p 2: %s", out);
    CHECK(th_run_peft(out, sizeof out, "bench --preset tiny --steps x") == 2 &&
              strstr(out, "peft bench: --steps: 'x' is not a whole number >= 1"),
          "bench --steps x: %s", out);
    CHECK(th_run_peft(out, sizeof out, "train --preset tiny --data %s --no-save --method lorax", data) == 2 &&
              strstr(out, "peft train: --method: 'lorax' is not full, lora, adapter-v1"),
          "--method lorax: %s", out);
    CHECK(th_run_peft(out, sizeof out, "train --help") == 0 &&
              strstr(out, "default full; lora for a GGUF model"),
          "train --help does not say the default on a GGUF model: %s", out);
}

/* ------------------------------------------------ a fresh user's second round */
/* The absolute path of the binary (the tests run it from other folders too). */
static const char *abs_bin(void) {
    static char path[1200];
    const char *b = th_peft_bin();
    char cwd[1024];
    if (b[0] == '/' || !getcwd(cwd, sizeof cwd))
        snprintf(path, sizeof path, "%s", b);
    else
        snprintf(path, sizeof path, "%s/%s", cwd, b);
    return path;
}

/* popen of `cd DIR && peft ARGS 2>&1`: its output into out, its exit status */
static int run_in(const char *dir, char *out, size_t cap, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd '%s' && %s %s 2>&1", dir, abs_bin(), args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* DIR/smol (the llama_mha fixture, vocabulary 64) and DIR/ids.txt: 15 examples of --seq 16 */
static void trial_setup(const char *dir) {
    th_sh("rm -rf '%s' && mkdir -p '%s/smol' && cp %s/llama_mha/config.json %s/llama_mha/model.safetensors "
          "'%s/smol/'",
          dir, dir, th_fixtures(), th_fixtures(), dir);
    char path[700];
    snprintf(path, sizeof path, "%s/ids.txt", dir);
    FILE *f = fopen(path, "w");
    for (int i = 0; f && i < 15 * 17; i++)
        fprintf(f, "%d ", (i * 7) % 23);
    if (f) fclose(f);
}

/* A run folder keeps absolute paths: --resume works from any folder; a run written with relative paths
   names train_config.json, the key and the path. A finished run resumed writes nothing; a shape-changing
   method flag on resume names the flag and both values. */
TEST(test_cli_trial_resume_paths) {
    static char out[1 << 16];
    if (!have_bin()) SKIP("%s not built", th_peft_bin());
    char dir[600], path[800], copy[800], args[2000];
    snprintf(dir, sizeof dir, "%s/trial_paths", th_tmpdir());
    trial_setup(dir);
    REQUIRE(run_in(dir, out, sizeof out,
                   "train --model smol --data ids.txt --method lora --steps 6 --batch 2 "
                   "--seq 16 --save-every 4 --out run") == 0,
            "train: %s", out);
    snprintf(path, sizeof path, "%s/run/train_config.json", dir);
    peft_json *j;
    REQUIRE_OK(peft_json_load(&j, path));
    const char *keys[2] = {"model", "data"}, *tails[2] = {"/smol", "/ids.txt"};
    for (int k = 0; k < 2; k++) {
        const peft_json *v = peft_json_get(j, keys[k]);
        const char *s = v && v->type == PEFT_JSON_STRING ? v->string : "";
        size_t n = strlen(s), t = strlen(tails[k]);
        CHECK(s[0] == '/' && n > t && !strcmp(s + n - t, tails[k]), "train_config.json \"%s\": \"%s\"",
              keys[k], s);
    }
    peft_json_free(j);

    /* a finished run resumed from its checkpoint-4: said up front, and train_config.json is not rewritten */
    snprintf(copy, sizeof copy, "%s/config_before", dir);
    th_sh("cp '%s' '%s'", path, copy);
    int rc = run_in(dir, out, sizeof out,
                    "train --resume run/checkpoint-4 --model ./smol --data ./ids.txt "
                    "--lr 0.5");
    CHECK(rc == 0 && strstr(out, "the run is finished (6 of 6 steps") && !strstr(out, "resuming from"),
          "resume of a finished run from its checkpoint (%d): %s", rc, out);
    CHECK(same_bytes(path, copy), "resuming a finished run rewrote train_config.json");

    /* from another folder */
    snprintf(args, sizeof args, "train --resume %s/run --steps 8", dir);
    rc = run_in("/", out, sizeof out, args);
    CHECK(rc == 0 && strstr(out, "resuming from") && strstr(out, "step    8/8"), "resume from / (%d): %s", rc,
          out);

    /* --lora-r changed on resume: the flag and both values */
    snprintf(args, sizeof args, "train --resume %s/run --steps 12 --lora-r 4", dir);
    rc = run_in("/", out, sizeof out, args);
    CHECK(rc == 1 && strstr(out, "--lora-r 4") && strstr(out, "lora_r 8"), "--lora-r 4 on resume (%d): %s",
          rc, out);

    /* a run written with a relative path (as before), resumed from another folder */
    th_sh("sed -i 's#\"model\": \"[^\"]*\"#\"model\": \"smol\"#' '%s'", path);
    snprintf(args, sizeof args, "train --resume %s/run --steps 10", dir);
    rc = run_in("/", out, sizeof out, args);
    CHECK(rc == 1 && strstr(out, "train_config.json: \"model\": smol") && strstr(out, "--model"),
          "relative model path in train_config.json (%d): %s", rc, out);
}

/* --eval-every on one small file holds out at least one example and says so; one example is refused. */
TEST(test_cli_trial_eval_holdout) {
    static char out[1 << 16];
    if (!have_bin()) SKIP("%s not built", th_peft_bin());
    char dir[600];
    snprintf(dir, sizeof dir, "%s/trial_eval", th_tmpdir());
    trial_setup(dir);
    int rc = run_in(dir, out, sizeof out,
                    "train --model smol --data ids.txt --method lora --steps 2 --batch 2 "
                    "--seq 16 --eval-every 1 --no-save");
    CHECK(rc == 0 && strstr(out, "held out 1 of 15 examples for --eval-every") && strstr(out, "1 held out") &&
              strstr(out, "step    2  eval loss"),
          "--eval-every on 15 examples (%d): %s", rc, out);
    th_sh("head -c 40 '%s/ids.txt' > '%s/one.txt'", dir, dir);
    rc = run_in(dir, out, sizeof out,
                "train --model smol --data one.txt --method lora --steps 2 --batch 2 "
                "--seq 16 --eval-every 1 --no-save");
    CHECK(rc == 2 && strstr(out, "--eval-every 1 needs held-out examples") && strstr(out, "1 example"),
          "--eval-every on one example (%d): %s", rc, out);
}

/* export --out: a folder with other files is refused (nothing written there), a previous export replaced;
   gguf into a folder says it is a folder. */
TEST(test_cli_trial_export_out) {
    static char out[1 << 16];
    if (!have_bin()) SKIP("%s not built", th_peft_bin());
    char dir[600], path[800];
    snprintf(dir, sizeof dir, "%s/trial_export", th_tmpdir());
    trial_setup(dir);
    REQUIRE(run_in(dir, out, sizeof out,
                   "train --model smol --data ids.txt --method lora --steps 2 --batch 2 "
                   "--seq 16 --out run") == 0,
            "train: %s", out);
    CHECK(run_in(dir, out, sizeof out, "export --adapter run --format peft --out ex") == 0, "export: %s",
          out);
    CHECK(run_in(dir, out, sizeof out, "export --adapter run --format peft --out ex") == 0,
          "export over a previous export: %s", out);
    th_sh("mkdir -p '%s/mine' && echo notes > '%s/mine/notes.txt'", dir, dir);
    int rc = run_in(dir, out, sizeof out, "export --adapter run --format peft --out mine");
    snprintf(path, sizeof path, "%s/mine/adapter_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    CHECK(rc == 2 && strstr(out, "notes.txt") && !f, "export into a folder with other files (%d): %s", rc,
          out);
    rc = run_in(dir, out, sizeof out, "export --adapter run --format gguf --out ex");
    CHECK(rc == 2 && strstr(out, "ex is a folder"), "export --format gguf into a folder (%d): %s", rc, out);
    /* from another folder, without --model: the adapter's base_model_name_or_path is "smol" as given to
       train (PEFT writes it so); the run's train_config.json knows where it is */
    char args[2000];
    snprintf(args, sizeof args, "export --adapter %s/run --format peft --out %s/ex3", dir, dir);
    rc = run_in("/", out, sizeof out, args);
    CHECK(rc == 0, "export from / without --model (%d): %s", rc, out);
    snprintf(path, sizeof path, "%s/ex3/adapter_config.json", dir);
    peft_json *j;
    REQUIRE_OK(peft_json_load(&j, path));
    const peft_json *b = peft_json_get(j, "base_model_name_or_path");
    const char *bs = b && b->type == PEFT_JSON_STRING ? b->string : "";
    size_t bn = strlen(bs);
    CHECK(bn >= 4 && !strcmp(bs + bn - 4, "smol"), "the export's base_model_name_or_path: %s", bs);
    peft_json_free(j);
}

/* A model whose greedy answer starts with a newline: every block linear zero (the residual stream is the
   embedding), embed rows e0 but the newline's e1, lm_head's newline row 10 e0 and "A"'s 10 e1: after any
   token but the newline comes a newline, after it "A". */
static int newline_model(const char *dir, const char *tokp, int *nl_id) {
    peft_tokenizer tok;
    int ids[8], a[8];
    if (peft_tokenizer_load(&tok, tokp, 800) != PEFT_OK) return 0;
    int n1 = peft_tokenizer_encode(&tok, "\n", 0, 0, ids, 8),
        n2 = peft_tokenizer_encode(&tok, "A", 0, 0, a, 8);
    peft_tokenizer_free(&tok);
    if (n1 != 1 || n2 != 1 || ids[0] >= 800 || a[0] >= 800) return 0;
    peft_config c;
    peft_config_preset(&c, "tiny");
    c.vocab_size = 800;
    c.dim = 32;
    c.hidden_dim = 64;
    c.n_layers = 1;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.max_seq_len = 256;
    c.tie_embeddings = 0;
    c.eos_id = 799;
    peft_model *m;
    if (peft_model_new(&m, &c, 1, 1) != PEFT_OK) return 0;
    for (int s = 0; s < PEFT_N_SITES; s++)
        if (m->layers[0].lin[s].w)
            memset(m->layers[0].lin[s].w->data, 0, sizeof(float) * m->layers[0].lin[s].w->n);
    memset(m->embed->data, 0, sizeof(float) * m->embed->n);
    memset(m->lm_head->data, 0, sizeof(float) * m->lm_head->n);
    for (int v = 0; v < 800; v++)
        m->embed->data[v * 32 + (v == ids[0])] = 1;
    m->lm_head->data[ids[0] * 32 + 0] = 10;
    m->lm_head->data[a[0] * 32 + 1] = 10;
    int ok = peft_model_save(m, dir) == PEFT_OK;
    peft_model_free(m);
    *nl_id = ids[0];
    return ok;
}

/* The wording of what a new user met: a layer past the model, a count out of range, --seq's tokens,
   --alpaca's answer, Ctrl-C. */
TEST(test_cli_trial_cosmetics) {
    static char out[1 << 16];
    if (!have_bin()) SKIP("%s not built", th_peft_bin());
    char dir[600], args[2000], tokp[700];
    snprintf(dir, sizeof dir, "%s/trial_cosmetics", th_tmpdir());
    trial_setup(dir);
    const char *base = "train --model smol --data ids.txt --method lora --batch 2 --seq 16";
    snprintf(args, sizeof args, "%s --steps 2 --no-save --lora-layers 40", base);
    int rc = run_in(dir, out, sizeof out, args);
    CHECK(rc == 1 && strstr(out, "--lora-layers 40") && strstr(out, "the model has 2 layers"),
          "--lora-layers 40 (%d): %s", rc, out);
    snprintf(args, sizeof args, "%s --steps 99999999999 --no-save", base);
    rc = run_in(dir, out, sizeof out, args);
    CHECK(rc == 2 && strstr(out, "'99999999999' is out of range: a whole number from 1 to 10000000"),
          "--steps 99999999999 (%d): %s", rc, out);
    rc = run_in(dir, out, sizeof out, "bench --preset tiny --steps 99999999999");
    CHECK(rc == 2 && strstr(out, "'99999999999' is out of range: a whole number from 1 to 1000000000"),
          "bench --steps 99999999999 (%d): %s", rc, out);

    /* --seq 32: 32 tokens predicted, not 33 */
    snprintf(tokp, sizeof tokp, "%s/hf_tok/gpt2.json", th_fixtures());
    char model[800];
    snprintf(model, sizeof model, "%s/nl_model", dir);
    int nl = -1;
    REQUIRE(newline_model(model, tokp, &nl), "the newline model");
    snprintf(args, sizeof args,
             "train --model %s --tokenizer %s --data %s/alpaca/data.json --seq 32 --no-save", model, tokp,
             th_fixtures());
    rc = th_run_peft(out, sizeof out, "%s", args);
    CHECK(rc == 1 && strstr(out, "among its first 32 predicted tokens"), "--seq 32 (%d): %s", rc, out);

    /* --alpaca prints the answer alone: no blank line before it */
    snprintf(args, sizeof args, "generate --model %s --tokenizer %s --alpaca --prompt 'Say A.' --max-new 4",
             model, tokp);
    rc = th_run_peft(out, sizeof out, "%s", args);
    CHECK(rc == 0 && !strcmp(out, "A\nA\n"), "generate --alpaca (%d): [%s]", rc, out);
    snprintf(args, sizeof args,
             "generate --model %s --tokenizer %s --prompt 'Say A:' --max-new 2 --print-ids", model, tokp);
    rc = th_run_peft(out, sizeof out, "%s", args);
    CHECK(rc == 0 && atoi(out) == nl, "the newline model's first token is %d: %s", nl, out);

    /* Ctrl-C: one line naming the last checkpoint saved, or that none was */
    snprintf(args, sizeof args, "%s --steps 8 --save-every 2 --out runi", base);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd '%s' && PEFT_INTERRUPT_AFTER_STEP=3 %s %s 2>&1", dir, abs_bin(), args);
    FILE *p = popen(cmd, "r");
    REQUIRE(p, "popen");
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 130 &&
              strstr(out,
                     "stopped by SIGINT after step 3 of 8; the last checkpoint saved is runi/checkpoint-2"),
          "Ctrl-C after step 3: %s", out);
    snprintf(cmd, sizeof cmd, "cd '%s' && PEFT_INTERRUPT_AFTER_STEP=1 %s %s --overwrite 2>&1", dir, abs_bin(),
             args);
    p = popen(cmd, "r");
    REQUIRE(p, "popen");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    st = pclose(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 130 &&
              strstr(out, "after step 1 of 8; no checkpoint was saved"),
          "Ctrl-C after step 1: %s", out);
}
