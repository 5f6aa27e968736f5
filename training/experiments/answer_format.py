"""Experiment: which answer wording lets the tiny decoder learn the lookup questions?

Decoder-only SFT on cached image features: the encoder and projector of a trained checkpoint are frozen, the
projector's tokens for `--n` training scenes (seeds 8,000,000+, unused by train.py's stages) are computed
once, and only the decoder (plus, with --train-embedding, the tied embedding rows the data uses) trains on
(cached tokens, question, answer) with the restricted softmax of train.py. About 0.2 s a step on the 2 cores,
so thousands of steps fit in minutes, where a full-model step costs 0.7 s.

Every 500 steps it prints, per question type, the share of 300 held-out scenes (seeds 9,000,000+) whose
whole answer is the top-1 prediction at every position (teacher-forced, full vocabulary), which matched
eval.py's greedy accuracy on the starting checkpoint (colour 0.54 / 0.535, count 0.72 / 0.714).

    reference/.venv/bin/python training/experiments/answer_format.py --model <old plm-tiny> \
        --colour sentence --steps 3000 --lr 2e-3 --weights colour=3,count=2,position=2 --train-embedding

The logged runs (experiments/answer_format_*.log) started from models/plm-tiny as of commit bbfcf2f (short
answers, colour questions 53.5%).
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "reference"))
import common as C  # noqa: E402
import make_data as D  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import train as T  # noqa: E402
from train import image_tokens  # noqa: E402


def count_noun(q: str) -> str:
    """"red objects", "circles" or "objects": what a count question counts."""
    return q[len("How many "):-len(" are there?")]


def counted(noun: str, o: dict) -> bool:
    return noun in ("objects", f"{o['colour']} objects", D.plural(o["shape"]))


def true_count(scene: dict, q: str) -> int:
    return sum(counted(count_noun(q), o) for o in scene["objects"])


def answer(scene: dict, item: dict, fmt: argparse.Namespace) -> str:
    """The answer to `item` in the chosen wording (the short forms are the ones plm-tiny was trained on)."""
    objs, q = scene["objects"], item["q"]
    if item["type"] == "colour":
        o = next(o for o in objs if q == f"What color is the {o['shape']}?")
        return D.colour_answer(o["shape"], o["colour"]) if fmt.colour == "sentence" else f"{o['colour'].capitalize()}."
    if item["type"] == "count":
        noun, k = count_noun(q), true_count(scene, q)
        if fmt.count == "there_are":
            return f"There are {k} {noun}."
        if fmt.count == "number_of":
            return f"The number of {noun} is {k}."
        if noun == "objects" or fmt.count == "short":
            return f"{k}."
        if fmt.count == "list":
            return item["a"]  # make_data's own answers: the matching objects listed, then their number
        if fmt.count in ("caption_first", "seen_first"):
            # every object in caption order (a walk the decoder already does for captions), then the number
            if fmt.count == "caption_first":
                walk = D.caption(scene)[:-1]
            else:
                parts = [f"{D.article(D.phrase(o))} {D.phrase(o)}" for o in objs]
                walk = "I see " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])
            return f"{walk}. {noun.capitalize()}: {k}."
        if fmt.count == "quadrants":
            # the four quadrants in reading order, the attribute restated at each, then the number of "yes"
            word = noun.split()[0] if noun.endswith(" objects") else next(s for s in D.SHAPES if D.plural(s) == noun)
            at = {(o["row"], o["col"]): o for o in objs}
            parts = [f"{word.capitalize()} at the {D.CELL_NAMES[r][c]}: "
                     f"{'yes' if (r, c) in at and counted(noun, at[(r, c)]) else 'no'}" for r in range(2) for c in range(2)]
            return ". ".join(parts) + f". So {k}."
        # "yes_no" / "yes_no_at": every object in caption order, each judged against the question
        def judged(o):
            where = f" at the {D.CELL_NAMES[o['row']][o['col']]}" if fmt.count == "yes_no_at" else ""
            return f"{D.article(D.phrase(o))} {D.phrase(o)}{where}: {'yes' if counted(noun, o) else 'no'}"
        text = ", ".join(judged(o) for o in objs) + f". So {k}."
        return text[0].upper() + text[1:]
    if item["type"] == "position" and fmt.position == "sentence":
        return f"The {q[len('Where is the '):-1]} is at the {item['a'][:-1].lower()}."
    return item["a"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(C.REPO / "models" / "plm-tiny"))
    ap.add_argument("--n", type=int, default=6000, help="cached training scenes")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--caption-prob", type=float, default=0.15)
    ap.add_argument("--weights", default="", help="question-type weights, e.g. colour=3,count=2")
    ap.add_argument("--colour", choices=["short", "sentence"], default="short")
    ap.add_argument("--count", choices=["short", "there_are", "number_of", "list", "caption_first", "seen_first", "yes_no", "yes_no_at", "quadrants"], default="short")
    ap.add_argument("--position", choices=["short", "sentence"], default="short")
    ap.add_argument("--grow", type=int, default=0, help="new identity-initialised decoder layers after each one")
    ap.add_argument("--balance-counts", action="store_true", help="attribute counts: each answer value equally often")
    ap.add_argument("--question-first", action="store_true", help="the question's text before the image tokens")
    ap.add_argument("--train-embedding", action="store_true", help="new answer words need trained rows")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    from transformers import PerceptionLMForConditionalGeneration, PerceptionLMProcessor

    model = PerceptionLMForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32).eval()
    proc = PerceptionLMProcessor.from_pretrained(a.model)
    tok = proc.tokenizer
    lm = model.model.language_model
    if a.grow:
        # after each layer, a copy of it that starts as the identity (o_proj and down_proj zero)
        T.GROW = a.grow
        T.grow_decoder(model)
        print(f"decoder grown to {len(lm.layers)} layers", flush=True)
    E = lm.embed_tokens.weight  # [128256, H], tied with the LM head

    t0 = time.time()
    train_seeds = list(range(8_000_000, 8_000_000 + a.n))
    test_seeds = list(range(D.TEST_BASE, D.TEST_BASE + 300))
    feats_train = image_tokens(model, proc, train_seeds).flatten(1, 2)  # [n, image tokens, H]
    feats_test = image_tokens(model, proc, test_seeds).flatten(1, 2)
    n_img = feats_train.shape[1]
    print(f"image tokens {tuple(feats_train.shape)} in {time.time() - t0:.0f}s", flush=True)

    prompts: dict[str, list[int]] = {}

    def prompt_ids(q):
        if q not in prompts:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
            s = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False,
                                        chat_template=C.PLM_CHAT_TEMPLATE)
            if a.question_first:
                s = s.replace("<|image|>" + q, q + "<|image|>")
            ids = tok.encode(s, add_special_tokens=False)
            j = ids.index(128002)
            prompts[q] = ids[:j] + [128002] * n_img + ids[j + 1:]
        return prompts[q]

    used = set(T.used_vocab(tok))
    for q in T.all_texts()[0]:
        used.update(prompt_ids(q))
    for k in range(300):
        sc = D.make_scene(8_900_000 + k)
        for x in D.questions(sc):
            used.update(tok.encode(answer(sc, x, a), add_special_tokens=False))
    used = torch.tensor(sorted(used))
    remap = torch.full((E.shape[0],), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))

    def make_batch(items, feats):  # items: (scene index, question, answer)
        seqs, labs = [], []
        for _, q, ans in items:
            p, t = prompt_ids(q), tok.encode(ans, add_special_tokens=False) + [128009]
            seqs.append(p + t)
            labs.append([-100] * len(p) + t)
        ids, att, lab = T.pad_sequences(seqs, labs)
        emb = F.embedding(ids, E)
        img = feats[torch.tensor([i for i, _, _ in items])].reshape(-1, feats.shape[-1])
        return emb.masked_scatter((ids == 128002)[..., None], img.to(emb.dtype)), att, lab

    weights = {k: float(v) for k, v in (x.split("=") for x in a.weights.split(",") if x)}

    def sample(rng):
        k = rng.randrange(a.n)
        sc = D.make_scene(train_seeds[k])
        if rng.random() < a.caption_prob:
            return k, D.CAPTION_PROMPT, D.caption(sc)
        qa = D.questions(sc, rng)
        types = sorted({x["type"] for x in qa})
        t = rng.choices(types, [weights.get(x, 1.0) for x in types])[0]
        if t == "count" and a.balance_counts:
            # every attribute count of the scene (absent ones too), grouped by answer: the answer is drawn first
            by_k = collections.defaultdict(list)
            for x in D.questions(sc):
                if x["type"] == "count" and x["q"] != "How many objects are there?":
                    by_k[true_count(sc, x["q"])].append(x)
            item = rng.choice(by_k[rng.choice(sorted(by_k))])
            return k, item["q"], answer(sc, item, a)
        item = rng.choice([x for x in qa if x["type"] == t])
        return k, item["q"], answer(sc, item, a)

    def evaluate():
        items, kinds = [], []
        for j, s in enumerate(test_seeds):
            sc, r = D.make_scene(s), random.Random(s)
            by = collections.defaultdict(list)
            for x in D.questions(sc, r):
                by[x["type"]].append(x)
            for t in sorted(by):
                x = r.choice(by[t])
                items.append((j, x["q"], answer(sc, x, a)))
                if t == "count" and x["q"] != "How many objects are there?":
                    t = "count_%d" % true_count(sc, x["q"])
                kinds.append(t)
            items.append((j, D.CAPTION_PROMPT, D.caption(sc)))
            kinds.append("caption")
        res = collections.defaultdict(lambda: [0, 0])
        with torch.no_grad():
            for b in range(0, len(items), 128):
                emb, att, lab = make_batch(items[b:b + 128], feats_test)
                h = lm(inputs_embeds=emb, attention_mask=att).last_hidden_state
                for r, t in enumerate(kinds[b:b + 128]):
                    pos = (lab[r, 1:] != -100).nonzero().flatten()
                    ok = bool(((h[r, pos] @ E.T).argmax(-1) == lab[r, 1:][pos]).all())
                    res[t][0] += ok
                    res[t][1] += 1
        counts = [v for k, v in res.items() if k.startswith("count")]
        res["count"] = [sum(v[0] for v in counts), sum(v[1] for v in counts)]
        return {k: round(v[0] / v[1], 3) for k, v in sorted(res.items())}

    for p in lm.parameters():
        p.requires_grad = False
    params = [p for n, p in lm.named_parameters() if "embed" not in n]
    for p in params:
        p.requires_grad = True
    groups = T.decay_groups(params)
    if a.train_embedding:
        E.requires_grad = True
        groups.append({"params": [E], "weight_decay": 0.0, "mult": 0.3})
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.98))
    print(f"step 0 {evaluate()}", flush=True)
    rng, ema, t0 = random.Random(123), None, time.time()
    for step in range(a.steps):
        frac = step / a.steps
        lr = T.scheduled_lr(a.lr, 100, step, frac)
        for g in opt.param_groups:
            g["lr"] = lr * g["mult"]
        emb, att, lab = make_batch([sample(rng) for _ in range(a.batch)], feats_train)
        h = lm(inputs_embeds=emb, attention_mask=att).last_hidden_state[:, :-1]
        y = lab[:, 1:]
        hs = h[y != -100]
        logits = torch.cat([hs @ E[used].T, torch.zeros(len(hs), 1)], 1)  # + the "any other token" column
        loss = F.cross_entropy(logits, remap[y[y != -100]])
        T.optimizer_step(opt, loss, params)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % 500 == 0 or step + 1 == a.steps:
            print(f"step {step + 1} loss {ema:.4f} lr {lr:.2e} {time.time() - t0:.0f}s {evaluate()}", flush=True)


if __name__ == "__main__":
    main()
