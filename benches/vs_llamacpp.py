#!/usr/bin/env python3
"""labelmill against llama.cpp on the same GGUF, the same workload and the same CPU, side by side.

Workload (both engines): a prompt prefix of P tokens evaluated once, then N documents of L tokens,
each scored on top of the cached prefix. llama.cpp comes from PyPI (llama-cpp-python); before each
document its context is rolled back to the prefix (`n_tokens = P`; `eval` removes the KV cells past
it), so it reuses the prefix KV as labelmill does. labelmill runs as `labelmill bench` (one process
per run; model load, prefix and one warm-up batch untimed); llama.cpp stays loaded in this process
(model load, prefix and one warm-up document untimed).

For every quantisation type, rounds alternate: labelmill at batch 1, llama.cpp, labelmill at its
best batch size (picked by a sweep first), labelmill at that batch with a 16-token prefix. Each
round prints its rates and ratios; the summary gives medians (of rates and of per-round ratios),
and the arithmetic rate as a fraction of the machine's f32 GEMM peak (`labelmill bench --peak`,
the `gemm` crate candle uses), measured in the same run.

    pip install llama-cpp-python          # builds llama.cpp for this CPU (about 10 minutes)
    cargo build --release
    python3 benches/vs_llamacpp.py --quants q8_0,q4_0,q4_k --rounds 5

Random-weight models come from `labelmill tiny-model` with the shape flags (default: dim 1024,
8 layers, 16 heads, ffn 2816, vocab 32000) and are kept under --work. A name in --quants may also
be one of llama.cpp's file types (`q4_k_m`, `q5_k_m`, `q3_k_m`, `q2_k`, ...): the model is then
generated in f32 and quantised by llama.cpp's own quantizer (`llama_model_quantize`), so the file
has the per-tensor mix llama.cpp gives it (Q4_K_M: Q6_K for `attn_v`, `ffn_down` and the output).
`--file NAME=PATH` (repeatable) times a GGUF as it is, with the tokenizer it carries, and
`--requantize PATH --quants ...` times llama.cpp's requantisations of a real file (for example the
SmolLM2 Q4_1 file, at its own shape).
"""

import ctypes

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time


def sh(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return out.stdout


def labelmill_bench(a, gguf, batch, prefix, seed):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    tok = os.path.join(os.path.dirname(gguf), "tokenizer.json")
    line = sh([a.labelmill, "bench", "--model", gguf]
              + (["--tokenizer", tok] if os.path.exists(tok) else [])
              + ["--docs", str(a.docs), "--doc-tokens", str(a.doc), "--prefix-tokens", str(prefix),
                 "--batch-size", str(batch), "--runs", "1", "--seed", str(seed)], env)
    return json.loads(line.strip().splitlines()[-1])


class LlamaCpp:
    def __init__(self, a, gguf):
        import numpy as np
        import llama_cpp
        from llama_cpp import Llama
        self.np, self.cpp = np, llama_cpp
        self.a = a
        self.llm = Llama(model_path=gguf, n_ctx=a.prefix + a.doc + 64,
                         n_batch=512, n_ubatch=512, n_threads=a.threads,
                         n_threads_batch=a.threads, logits_all=False, verbose=False)
        self.vocab = self.llm.n_vocab()

    def run(self, seed):
        a, llm = self.a, self.llm
        rng = random.Random(seed)
        ids = lambda n: [rng.randrange(259, self.vocab) for _ in range(n)]
        prefix = [1] + ids(a.prefix - 1)
        docs = [ids(a.doc) for _ in range(a.docs)]
        llm.reset()
        llm.eval(prefix)
        p = llm.n_tokens
        llm.eval(docs[0])  # warm-up
        t = time.perf_counter()
        for d in docs:
            llm.n_tokens = p
            llm.eval(d)
            # The last position's logits, as labelmill reads its label scores.
            logits = self.np.ctypeslib.as_array(self.cpp.llama_get_logits(llm.ctx),
                                                shape=(self.vocab,))
            _ = logits.argmax()
        secs = time.perf_counter() - t
        return {"docs_per_s": a.docs / secs, "doc_tokens_per_s": a.docs * a.doc / secs,
                "seconds": secs}


def flops_per_doc_token(a, prefix):
    """Matrix-product FLOPs per document token: the projections plus attention over the context."""
    hd = a.dim // a.heads
    kvd = a.kv_heads * hd
    proj = a.layers * (2 * a.dim * a.dim + 2 * a.dim * kvd + 3 * a.dim * a.ffn)
    ctx = prefix + a.doc / 2  # mean keys seen by a document token
    attn = a.layers * 2 * a.dim * ctx  # q·k and p·v
    return 2 * (proj + attn)


# labelmill tiny-model's quantisations; any other name is a llama.cpp file type.
TINY_QUANTS = {"f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k",
               "q6_k"}


def llama_quantize(a, src, dst, ftype):
    """Writes `dst`: `src` quantised by llama.cpp to its file type `ftype` (q4_k_m, q5_0, ...)."""
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype.upper())
    params.nthread = a.threads
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantise {src} to {ftype}")


def model(a, quant):
    """The GGUF to time for `quant`: generated (tiny-model), or quantised by llama.cpp."""
    if a.requantize:
        base = os.path.splitext(os.path.basename(a.requantize))[0]
        out = os.path.join(a.work, f"{base}.{quant}.gguf")
        if not os.path.exists(out):
            llama_quantize(a, a.requantize, out, quant)
        return out
    tiny = quant if quant in TINY_QUANTS else "f32"
    d = os.path.join(a.work, f"{tiny}-{a.layers}l-{a.dim}d-{a.ffn}f-{a.vocab}v")
    if not os.path.exists(f"{d}/model.gguf"):
        print(f"# generating {d}", file=sys.stderr)
        sh([a.labelmill, "tiny-model", "--out", d, "--quant", tiny, "--layers", str(a.layers),
            "--dim", str(a.dim), "--heads", str(a.heads), "--kv-heads", str(a.kv_heads),
            "--ffn", str(a.ffn), "--vocab", str(a.vocab),
            "--context", str(max(1024, a.prefix + a.doc + 64))])
    if tiny == quant:
        return f"{d}/model.gguf"
    out = f"{d}/model.{quant}.gguf"
    if not os.path.exists(out):
        llama_quantize(a, f"{d}/model.gguf", out, quant)
    return out


def med(xs):
    return statistics.median(xs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labelmill", default="target/release/labelmill")
    p.add_argument("--work", default="target/vs-llamacpp")
    p.add_argument("--quants", default="q8_0,q4_0,q4_k")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--docs", type=int, default=32)
    p.add_argument("--doc", type=int, default=128, help="L: tokens per document")
    p.add_argument("--prefix", type=int, default=512, help="P: tokens in the shared prefix")
    p.add_argument("--short-prefix", type=int, default=16)
    p.add_argument("--batches", default="1,2,4,8,16", help="batch sizes of the sweep")
    p.add_argument("--batch", type=int, help="skip the sweep and use this batch size")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=16)
    p.add_argument("--ffn", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--file", action="append", default=[], metavar="NAME=PATH",
                   help="time this GGUF as it is (repeatable; --quants then defaults to none)")
    p.add_argument("--requantize", metavar="PATH",
                   help="time llama.cpp's requantisations of this GGUF to each of --quants")
    p.add_argument("--pairs", action="store_true",
                   help="rounds of labelmill at batch 1 and llama.cpp only (implies --batch 1)")
    p.add_argument("--json", help="also write every figure here")
    a = p.parse_args()
    if a.pairs:
        a.batch = 1
    files = [tuple(f.split("=", 1)) for f in a.file]
    if files and a.quants == p.get_default("quants"):
        a.quants = ""
    os.makedirs(a.work, exist_ok=True)

    import llama_cpp
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    peak = json.loads(sh([a.labelmill, "bench", "--peak", str(a.peak_size), "--runs", "5"], env))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    print(f"# machine: {cpu}, {os.cpu_count()} CPUs; {a.threads} threads each; "
          f"llama-cpp-python {llama_cpp.__version__}")
    print(f"# f32 GEMM peak ({a.peak_size}³, gemm crate): {peak['peak_gflops']:.1f} GFLOP/s")
    print(f"# model: dim {a.dim}, {a.layers} layers, {a.heads} heads ({a.kv_heads} kv), "
          f"ffn {a.ffn}, vocab {a.vocab}; P = {a.prefix}, L = {a.doc}, N = {a.docs}")
    results = {"peak": peak, "args": vars(a), "cpu": cpu, "quants": {}}
    rows = []
    todo = [(q, model(a, q)) for q in a.quants.split(",") if q] + files
    for quant, d in todo:
        generated = not (a.requantize or (quant, d) in files)
        ll = LlamaCpp(a, d)
        if a.batch:
            best = a.batch
            sweep = {}
        else:
            sweep = {b: labelmill_bench(a, d, b, a.prefix, 100)["doc_tokens_per_s"]
                     for b in map(int, a.batches.split(","))}
            best = max(sweep, key=sweep.get)
            print(f"## {quant}: batch sweep (doc tokens/s) "
                  + ", ".join(f"{b}: {v:.0f}" for b, v in sweep.items()) + f" -> batch {best}")
        rounds = []
        for r in range(a.rounds):
            one = labelmill_bench(a, d, 1, a.prefix, r + 1)
            cpp = ll.run(r + 1)
            # --pairs: batch 1 against llama.cpp only (the other two columns repeat batch 1).
            bat = one if a.pairs else labelmill_bench(a, d, best, a.prefix, r + 1)
            short = one if a.pairs else labelmill_bench(a, d, best, a.short_prefix, r + 1)
            rd = {"labelmill_b1": one["doc_tokens_per_s"], "llamacpp": cpp["doc_tokens_per_s"],
                  "labelmill_best": bat["doc_tokens_per_s"],
                  "labelmill_best_short_prefix": short["doc_tokens_per_s"],
                  "kernels": one["kernels"]}
            rd["ratio_b1"] = rd["labelmill_b1"] / rd["llamacpp"]
            rd["ratio_best"] = rd["labelmill_best"] / rd["llamacpp"]
            rd["prefix_ratio"] = rd["labelmill_best"] / rd["labelmill_best_short_prefix"]
            rounds.append(rd)
            print(f"{quant} round {r + 1}: labelmill b1 {rd['labelmill_b1']:.1f} tok/s | llama.cpp "
                  f"{rd['llamacpp']:.1f} | ratio {rd['ratio_b1']:.2f}× | labelmill b{best} "
                  f"{rd['labelmill_best']:.1f} ({rd['ratio_best']:.2f}×) | P={a.short_prefix}: "
                  f"{rd['labelmill_best_short_prefix']:.1f} (P={a.prefix}/P={a.short_prefix} "
                  f"{rd['prefix_ratio']:.2f})", flush=True)
        s = {k: med([rd[k] for rd in rounds]) for k in rounds[0] if k != "kernels"}
        # FLOPs are counted from the shape flags: for files of another shape they are left out.
        fl = flops_per_doc_token(a, a.prefix) if generated else float("nan")
        s.update(best_batch=best, sweep=sweep, kernels=rounds[0]["kernels"],
                 gflops_b1=s["labelmill_b1"] * fl / 1e9, gflops_best=s["labelmill_best"] * fl / 1e9,
                 gflops_llamacpp=s["llamacpp"] * fl / 1e9)
        s["peak_fraction_b1"] = s["gflops_b1"] / peak["peak_gflops"]
        s["peak_fraction_best"] = s["gflops_best"] / peak["peak_gflops"]
        s["peak_fraction_llamacpp"] = s["gflops_llamacpp"] / peak["peak_gflops"]
        results["quants"][quant] = {"summary": s, "rounds": rounds}
        s["file"], s["generated"] = d, generated
        rows.append((quant, s))
        del ll

    shape = f"{a.dim}d × {a.layers}L, ffn {a.ffn}, vocab {a.vocab}"
    print("\n| model | quant | P | L | N | labelmill b1 docs/s (tok/s) | llama.cpp docs/s (tok/s) "
          "| ratio b1 | labelmill best batch docs/s (tok/s) | ratio best | P=512 vs P=16 "
          "| GFLOP/s b1 / best / llama.cpp | of peak b1 / best / llama.cpp |")
    print("|" + "---|" * 13)
    for quant, s in rows:
        dps = lambda tps: tps / a.doc
        name = shape if s["generated"] else os.path.basename(s["file"])
        print(f"| {name} | {quant} | {a.prefix} | {a.doc} | {a.docs} "
              f"| {dps(s['labelmill_b1']):.2f} ({s['labelmill_b1']:.0f}) "
              f"| {dps(s['llamacpp']):.2f} ({s['llamacpp']:.0f}) | {s['ratio_b1']:.2f}× "
              f"| {dps(s['labelmill_best']):.2f} ({s['labelmill_best']:.0f}, batch {s['best_batch']}) "
              f"| {s['ratio_best']:.2f}× | {s['prefix_ratio']:.2f} "
              f"| {s['gflops_b1']:.0f} / {s['gflops_best']:.0f} / {s['gflops_llamacpp']:.0f} "
              f"| {s['peak_fraction_b1']:.2f} / {s['peak_fraction_best']:.2f} / "
              f"{s['peak_fraction_llamacpp']:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
