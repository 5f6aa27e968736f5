#!/usr/bin/env python3
"""Hugging Face transformers peer on the same GPU and the same checkpoint: bf16, sdpa attention, batch 1.

    python3 hf_peer.py --model /tmp/plm-1b --json OUT.json [--decode-tokens 128] [--prefill 512] [--tiles 1,37]
                       [--ttft-tiles 37] [--describe-tokens 64] [--runs 3] [--time-budget 150]

decode ms/token = (generate N tokens - generate 1 token) / (N - 1), min_new_tokens forces the length;
prefill tokens/s (one forward, logits of the last row); vision tiles/s (get_image_features on random pixels);
time to first token of an image prompt (generate 1 token with ttft-tiles tiles); "describe": the same prompt
generating describe-tokens tokens (min_new_tokens forces the length), the whole call. Medians of --runs after a
warm-up. When the full model cannot be built (e.g. timm missing), the text part is timed with a
LlamaForCausalLM of the same shapes and random weights, and "fallback" says so.
"""
import argparse
import json
import statistics
import sys
import time
import traceback


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prefill", default="512")
    ap.add_argument("--tiles", default="1,37")
    ap.add_argument("--ttft-tiles", type=int, default=37)
    ap.add_argument("--describe-tokens", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time-budget", type=float, default=150.0)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    t_start = time.time()
    res = {"model": a.model, "peer": "transformers", "attn": "sdpa", "dtype": "bfloat16", "errors": []}

    def save():
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)

    def out_of_time():
        return time.time() - t_start > a.time_budget

    try:
        import torch
        try:
            import torchvision  # noqa: F401
        except Exception:  # noqa: BLE001  torchvision built for another torch: define the two schemas timm needs
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import transformers
        res["torch"] = torch.__version__
        res["transformers"] = transformers.__version__
        dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        res["device"] = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    except Exception as e:  # noqa: BLE001
        res["errors"].append(f"import: {e}")
        save()
        return 1

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def sync_time(fn):
        sync()
        t = time.perf_counter()
        r = fn()
        sync()
        return (time.perf_counter() - t) * 1000.0, r

    def med(fn, runs):
        fn()  # warm-up
        return statistics.median(sync_time(fn)[0] for _ in range(runs))

    model, full = None, False
    t0 = time.time()
    try:
        from transformers import PerceptionLMForConditionalGeneration
        model = PerceptionLMForConditionalGeneration.from_pretrained(
            a.model, dtype=torch.bfloat16, attn_implementation="sdpa").to(dev).eval()
        full = True
    except Exception as e:  # noqa: BLE001
        res["errors"].append(f"full model: {type(e).__name__}: {e}")
        try:
            from transformers import AutoConfig, LlamaForCausalLM
            cfg = AutoConfig.from_pretrained(a.model).text_config
            cfg._attn_implementation = "sdpa"
            with torch.device(dev):
                model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
            res["fallback"] = "LlamaForCausalLM with random weights of the same shapes (text only)"
        except Exception as e2:  # noqa: BLE001
            res["errors"].append(f"fallback: {type(e2).__name__}: {e2}")
            save()
            return 1
    res["load_s"] = time.time() - t0
    cfg = model.config
    tcfg = getattr(cfg, "text_config", cfg)
    V = tcfg.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand_ids(n):
        return torch.randint(1000, min(100000, V - 1), (1, n), generator=gen).to(dev)

    with torch.inference_mode():
        # decode
        try:
            ids = rand_ids(16)
            N = a.decode_tokens

            def g(n):
                return lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                              min_new_tokens=n, do_sample=False, pad_token_id=0)
            t1 = med(g(1), a.runs)
            tn = med(g(N), a.runs)
            res["decode_tokens"] = N
            res["decode_ms_per_token"] = (tn - t1) / (N - 1)
            print(f"hf decode: {res['decode_ms_per_token']:.3f} ms/token", flush=True)
        except Exception as e:  # noqa: BLE001
            res["errors"].append(f"decode: {e}")
            traceback.print_exc()
        save()
        # prefill
        res["prefill"] = {}
        for n in [int(x) for x in a.prefill.split(",") if x]:
            if out_of_time():
                res["errors"].append(f"prefill {n}: skipped (time budget)")
                break
            try:
                ids = rand_ids(n)
                ms = med(lambda: model(input_ids=ids, logits_to_keep=1), a.runs)
                res["prefill"][str(n)] = {"ms": ms, "tokens_per_s": n / (ms / 1000.0)}
                print(f"hf prefill {n}: {ms:.2f} ms", flush=True)
            except Exception as e:  # noqa: BLE001
                res["errors"].append(f"prefill {n}: {e}")
        save()
        if full:
            S = 448
            res["vision"] = {}
            for t in [int(x) for x in a.tiles.split(",") if x]:
                if out_of_time():
                    res["errors"].append(f"vision {t}: skipped (time budget)")
                    break
                try:
                    px = torch.rand((1, t, 3, S, S), generator=gen).mul(2).sub(1).to(dev, torch.bfloat16)
                    ms = med(lambda: model.model.get_image_features(pixel_values=px), a.runs)
                    res["vision"][str(t)] = {"ms": ms, "tiles_per_s": t / (ms / 1000.0)}
                    print(f"hf vision {t} tiles: {ms:.2f} ms", flush=True)
                except Exception as e:  # noqa: BLE001
                    res["errors"].append(f"vision {t}: {e}")
            save()
            if a.ttft_tiles > 0 and not out_of_time():
                try:
                    t = a.ttft_tiles
                    img = torch.full((1, t * 256), cfg.image_token_id, dtype=torch.long, device=dev)
                    txt = rand_ids(5)
                    ids = torch.cat([txt[:, :3], img, txt[:, 3:]], dim=1)
                    px = torch.rand((1, t, 3, S, S), generator=gen).mul(2).sub(1).to(dev, torch.bfloat16)
                    ms = med(lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                    pixel_values=px, max_new_tokens=1, do_sample=False,
                                                    pad_token_id=0), a.runs)
                    res["ttft_tiles"] = t
                    res["ttft_ms"] = ms
                    print(f"hf ttft {t} tiles: {ms:.1f} ms", flush=True)
                    n = a.describe_tokens
                    if n > 0 and not out_of_time():
                        ms = med(lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                        pixel_values=px, max_new_tokens=n, min_new_tokens=n,
                                                        do_sample=False, pad_token_id=0), a.runs)
                        res["describe_tokens"] = n
                        res["describe_ms"] = ms
                        print(f"hf describe {t} tiles + {n} tokens: {ms:.1f} ms", flush=True)
                except Exception as e:  # noqa: BLE001
                    res["errors"].append(f"ttft: {e}")
    res["total_s"] = time.time() - t_start
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
