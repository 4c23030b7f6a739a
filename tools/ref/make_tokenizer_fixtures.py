#!/usr/bin/env python3
"""Writes tests/fixtures/sp_llama2.jsonl: ≥200 test strings (English, digits,
whitespace runs, accents, CJK, Cyrillic, Greek, emoji, code, punctuation,
tabs and newlines) with the ids the real `sentencepiece` package gives for
them with the LLaMA-2 tokenizer.model in ../shared/data/llama2c (encode(),
no BOS), and the decoded text.

Run:  python3 tools/ref/make_tokenizer_fixtures.py
"""
import json, os, random
import sentencepiece as spm

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODEL = os.path.join(ROOT, "..", "shared", "data", "llama2c", "tokenizer.model")
OUT = os.path.join(ROOT, "tests", "fixtures", "sp_llama2.jsonl")

BASE = [
    "Hello world", "hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, there was a little girl named Lily.", " leading space", "trailing space ",
    "  two leading", "a  b", "a   b    c", "tabs\tand\tmore", "new\nline", "\n", " ", "  ", "\t",
    "1234567890", "3.14159", "2 + 2 = 4", "1,000,000", "x^2 + y^2", "v1.2.3-beta",
    "café", "naïve façade", "Straße", "Ångström", "日本語のテキスト", "中文字符", "한국어",
    "Привет, мир", "Γειά σου κόσμε", "שלום", "مرحبا", "😀", "I ❤️ NY", "👍🏽👍🏽", "🤖 robots 🤖",
    "def f(x):\n    return x * 2", "int main(void) { return 0; }", "for (i = 0; i < n; i++) {}",
    "<html><body>hi</body></html>", "SELECT * FROM t WHERE a = 1;", "`code` and **bold**",
    "\"quoted\" and 'single'", "(parens) [brackets] {braces}", "email@example.com", "https://x.org/a?b=c",
    "CamelCaseIdentifier", "snake_case_identifier", "ALL CAPS SHOUTING", "MiXeD CaSe",
    "a", "ab", "abc", "...", "?!", "--", "—em dash—", "“curly quotes”", "½ ¾ ©®™",
]
WORDS = ["the", "cat", "sat", "on", "mat", "Lily", "happy", "running", "42", "7", "über", "ñ", "京", "🙂",
         "x", "=", "(", ")", ";", "\n", "\t", "  ", "don't", "it's", "well-known", "e.g.", "100%", "$5"]


def main():
    sp = spm.SentencePieceProcessor(model_file=MODEL)
    rng = random.Random(0)
    texts = list(BASE)
    while len(texts) < 230:
        n = rng.randint(1, 12)
        texts.append("".join(rng.choice([" ", "", " "]) + rng.choice(WORDS) for _ in range(n)).strip(" ") or "x")
    with open(OUT, "w") as f:
        for t in texts:
            ids = sp.encode(t)
            f.write(json.dumps({"text": t, "ids": ids, "decoded": sp.decode(ids)}, ensure_ascii=False) + "\n")
    print("wrote", OUT, len(texts), "strings, sentencepiece", spm.__version__)


if __name__ == "__main__":
    main()
