#!/usr/bin/env python3
"""Writes tests/fixtures/added_tokens/: two small tokenizer.json files whose added
tokens use the flags of tokenizers' AddedToken, and the ids `tokenizers` gives
for a set of strings (encode(s, add_special_tokens=False)):

  phi3.json   Phi-3-style: the legacy LLaMA SentencePiece form (Prepend/Replace
              normalizer, hf_tok/sp_legacy.json) with Phi-3-mini's chat tokens:
              <|endoftext|>, then <|assistant|>, <|end|>, <|system|>, <|user|>
              with rstrip (so the newline after <|user|> goes into the token),
              special, not normalized; and a RoBERTa-style <mask> with lstrip
  flags.json  byte-level (hf_tok/gpt2.json) with every flag: <mask> lstrip,
              [SEP] rstrip, "hello" single_word, <norm> and "bc" normalized
              (matched after the non-normalized ones, in what lies between),
              <ab> and "m>z" not normalized (so "<norm>z" splits as "<no" + "rm>z"),
              "yes" single_word + normalized

Run:  python3 tools/ref/make_added_tokens_fixture.py
"""
import json, os
from tokenizers import Tokenizer, AddedToken

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "added_tokens")
HF_TOK = os.path.join(ROOT, "tests", "fixtures", "hf_tok")

STRINGS = [
    "<|user|>\nHello there<|end|>\n<|assistant|>\nHi!<|end|>\n",
    "<|system|>\nYou are terse.<|end|>\n<|user|>\n  two spaces<|end|>\n<|assistant|>",
    "<|user|>   \n\n\t x<|end|>", "<|user|>\u00a0\u3000y", "<|endoftext|> after", "<|endoftext|>\nafter",
    "no tokens here", "a <mask> b", "a<mask>b", "   <mask>", "x \n <mask>", "<mask><mask>", " <mask> <mask> ",
    "<|user|> <mask> <|end|>", "\u3000<mask>", "text<|assistant|>", "<|assistant|>",
    "[SEP]  next", "[SEP]\n\nnext", "a [SEP] b [SEP]", "hello world", "say hello", "hellothere", "ahello",
    "_hello", "hello_", "hello!", "(hello)", "hello", "héllo hello", "hello2", "2hello", "<norm>x",
    "a<norm>",
    "<ab>c", "abc", "a bc d", "<ab>bc", "yes", "yes no", "eyes", "yes!", "yesyes", " yes ", "<mask>hello",
    "hello<mask>", "é<mask>é", "<norm>z", "a<norm>z b<norm>", "",
]

def build(src, tokens):
    t = Tokenizer.from_file(os.path.join(HF_TOK, src))
    for tok, special in tokens:
        if special:
            t.add_special_tokens([tok])
        else:
            t.add_tokens([tok])
    return t

def main():
    os.makedirs(OUT, exist_ok=True)
    sets = {
        "phi3": build("sp_legacy.json", [
            (AddedToken("<|endoftext|>", special=True, normalized=False), True),
            (AddedToken("<|assistant|>", rstrip=True, special=True, normalized=False), True),
            (AddedToken("<|end|>", rstrip=True, special=True, normalized=False), True),
            (AddedToken("<|system|>", rstrip=True, special=True, normalized=False), True),
            (AddedToken("<|user|>", rstrip=True, special=True, normalized=False), True),
            (AddedToken("<mask>", lstrip=True, special=True, normalized=False), True),
        ]),
        "flags": build("gpt2.json", [
            (AddedToken("<mask>", lstrip=True, special=True, normalized=False), True),
            (AddedToken("[SEP]", rstrip=True, special=True, normalized=False), True),
            (AddedToken("hello", single_word=True, normalized=False), False),
            (AddedToken("<norm>", normalized=True), False),
            (AddedToken("bc", normalized=True), False),
            (AddedToken("<ab>", normalized=False), False),
            (AddedToken("yes", single_word=True, normalized=True), False),
            (AddedToken("m>z", normalized=False), False),
        ]),
    }
    for name, t in sets.items():
        t.save(os.path.join(OUT, name + ".json"))
        t = Tokenizer.from_file(os.path.join(OUT, name + ".json"))
        with open(os.path.join(OUT, name + ".jsonl"), "w") as f:
            for s in STRINGS:
                ids = t.encode(s, add_special_tokens=False).ids
                f.write(json.dumps({"text": s, "ids": ids}, ensure_ascii=False) + "\n")
        print(name, len(STRINGS), "strings")

if __name__ == "__main__":
    main()
