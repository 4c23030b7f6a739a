/* What a new user's first runs of `peft train` found: a finished run
   resumed, the clock of a resumed log, the seed's JSON type, the default
   method on a GGUF model, and the wording of a refused value. */
#include "harness.h"
#include <sys/stat.h>

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
