#!/usr/bin/env python3
"""Writes tests/fixtures/hf_tok/: three small tokenizer.json files of the
flavours LLaMA-family checkpoints ship, trained here (no hub access), and
the ids the real `tokenizers` package gives for >= 200 test strings:

  sp.json       SentencePiece flavour (LLaMA-1/2, TinyLlama): a sentencepiece
                BPE model with byte fallback, converted by transformers'
                LlamaTokenizer exactly as the hub's LLaMA-2 tokenizer.json was
                (Metaspace prepend "first", no split, ByteFallback decoder)
  llama3.json   byte-level, LLaMA-3 style: Split on LLaMA-3's regex, then
                ByteLevel without regex; ignore_merges; <|begin_of_text|> as BOS
  gpt2.json     byte-level, SmolLM style: Digits(individual) then ByteLevel
                with GPT-2's regex; <|endoftext|>, <|im_start|>, <|im_end|>

and, not committed (3.6 MB), build/ref/llama2-tokenizer.json converted from
../shared/data/llama2c/tokenizer.model with build/ref/llama2-hf.jsonl (ids of
the sp_llama2 strings by `tokenizers` over it); tests use them where present.

The hub's own LLaMA-2 / TinyLlama tokenizer.json files were converted by
transformers 4.x, whose "legacy" form differs: make_hf_legacy_fixtures.py.

Run:  python3 tools/ref/make_hf_tokenizer_fixtures.py
"""
import json, os, random, shutil, tempfile
import sentencepiece as spm
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors, Regex
from transformers import LlamaTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "hf_tok")
SP_STRINGS = os.path.join(ROOT, "tests", "fixtures", "sp_llama2.jsonl")
LLAMA2 = os.path.join(ROOT, "..", "shared", "data", "llama2c", "tokenizer.model")
BUILD = os.path.join(ROOT, "build", "ref")

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")

EXTRA = ["I'M sure DON'T we'll they've you'd", "it's 'quoted' ' s", "Hello<|eot_id|>world", "<|begin_of_text|>Hi",
         "a<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "12345678", "１２３ fullwidth", "Ⅻ roman", "x² y³",
         "\r\n\r\n", "a  \n\n  b", "end with spaces   ", "   ", "tab\t\tx", "mixed 3rd 21st 100km", "ünïcödé",
         "日本語 テキスト", "emoji 🤖🤖 test", "👩‍💻 zwj", "\u00a0nbsp\u00a0x", "line\u2028sep", "\x0bvt"]


def corpus(texts):
    rng = random.Random(1)
    words = ("the of and to in is was for on that with as by at from it his her they we you this "
             "story little girl boy dog cat happy sad big small said went saw day time play park "
             "def return int main void print import class self x y 0 1 2 3 4 5 6 7 8 9 10 42 100 2024").split()
    out = list(texts) * 3
    for _ in range(3000):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) + rng.choice([".", "!", "?", ",", ""]))
    return out


def train_small_sp(data, folder):
    """The small sentencepiece BPE model behind sp.json (and sp_legacy.json)."""
    spm.SentencePieceTrainer.train(sentence_iterator=iter(data), model_prefix=os.path.join(folder, "tokenizer"),
                                   vocab_size=700, model_type="bpe", byte_fallback=True, character_coverage=0.9995,
                                   split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
                                   normalization_rule_name="identity", minloglevel=2)


def dump(tok, path_json, path_ids, texts, special_ok):
    tok.save(path_json)
    t = Tokenizer.from_file(path_json)
    with open(path_ids, "w") as f:
        for s in texts:
            ids = t.encode(s, add_special_tokens=False).ids
            with_bos = t.encode(s, add_special_tokens=True).ids
            f.write(json.dumps({"text": s, "ids": ids, "ids_special": with_bos,
                                "decoded": t.decode(ids, skip_special_tokens=False)}, ensure_ascii=False) + "\n")


def main():
    texts = [json.loads(l)["text"] for l in open(SP_STRINGS, encoding="utf-8")] + EXTRA
    os.makedirs(OUT, exist_ok=True)
    data = corpus(texts)
    tmp = tempfile.mkdtemp()
    # 1. SentencePiece flavour, through transformers' converter
    train_small_sp(data, tmp)
    lt = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True)
    lt.save_pretrained(os.path.join(tmp, "out"))
    sp_tok = Tokenizer.from_file(os.path.join(tmp, "out", "tokenizer.json"))
    # the converted template adds no BOS in transformers 5; LLaMA-2's hub file does
    sp_tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    dump(sp_tok, os.path.join(OUT, "sp.json"), os.path.join(OUT, "sp.jsonl"), texts, True)
    # 2. byte-level, LLaMA-3 style
    t3 = Tokenizer(models.BPE(ignore_merges=True))
    t3.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t3.decoder = decoders.ByteLevel()
    t3.train_from_iterator(data, trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                     special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]))
    t3.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                      special_tokens=[("<|begin_of_text|>", t3.token_to_id("<|begin_of_text|>"))])
    dump(t3, os.path.join(OUT, "llama3.json"), os.path.join(OUT, "llama3.jsonl"), texts, True)
    # 3. byte-level, GPT-2 / SmolLM style
    t2 = Tokenizer(models.BPE())
    t2.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    t2.decoder = decoders.ByteLevel()
    t2.train_from_iterator(data, trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                     special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]))
    dump(t2, os.path.join(OUT, "gpt2.json"), os.path.join(OUT, "gpt2.jsonl"), texts, False)
    # 4. the real LLaMA-2 vocabulary, converted (kept out of the repository)
    if os.path.exists(LLAMA2):
        d = os.path.join(tmp, "l2")
        os.makedirs(d)
        shutil.copy(LLAMA2, os.path.join(d, "tokenizer.model"))
        LlamaTokenizer.from_pretrained(d).save_pretrained(os.path.join(d, "out"))
        os.makedirs(BUILD, exist_ok=True)
        l2 = Tokenizer.from_file(os.path.join(d, "out", "tokenizer.json"))
        l2.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        sp_texts = [json.loads(l)["text"] for l in open(SP_STRINGS, encoding="utf-8")]
        dump(l2, os.path.join(BUILD, "llama2-tokenizer.json"), os.path.join(BUILD, "llama2-hf.jsonl"), sp_texts, True)
    shutil.rmtree(tmp)
    print("wrote", OUT, len(texts), "strings")


if __name__ == "__main__":
    main()
