#!/usr/bin/env python3
"""PyTorch reference for `make bench`: a plain eager implementation of crl's
decoder (RMSNorm, multi-head attention with RoPE, SwiGLU, untied LM head),
written for the benchmark only. It times the same two workloads crl times:

  train   batch B x T tokens: forward, cross-entropy, backward, AdamW step
  sample  one prompt of P tokens, G samples x N new tokens with a KV cache
          (prompt prefilled once, its cache expanded to G rows)

and prints one JSON object per line. Never part of the product."""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(s, d, h, f):
        super().__init__()
        s.h, s.hd = h, d // h
        s.n1 = torch.nn.Parameter(torch.ones(d))
        s.n2 = torch.nn.Parameter(torch.ones(d))
        s.q = torch.nn.Linear(d, d, bias=False)
        s.k = torch.nn.Linear(d, d, bias=False)
        s.v = torch.nn.Linear(d, d, bias=False)
        s.o = torch.nn.Linear(d, d, bias=False)
        s.g = torch.nn.Linear(d, f, bias=False)
        s.u = torch.nn.Linear(d, f, bias=False)
        s.dn = torch.nn.Linear(f, d, bias=False)


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):  # x (B, h, T, hd); rotate_half convention
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Model(torch.nn.Module):
    def __init__(s, v, d, L, h, f, maxlen):
        super().__init__()
        s.emb = torch.nn.Embedding(v, d)
        s.blocks = torch.nn.ModuleList([Block(d, h, f) for _ in range(L)])
        s.nf = torch.nn.Parameter(torch.ones(d))
        s.head = torch.nn.Linear(d, v, bias=False)
        hd = d // h
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(maxlen).float(), inv)
        ang = torch.cat((ang, ang), dim=-1)
        s.register_buffer("cos", ang.cos())
        s.register_buffer("sin", ang.sin())

    def forward(s, idx, cache=None, pos0=0):
        B, T = idx.shape
        x = s.emb(idx)
        cos, sin = s.cos[pos0:pos0 + T], s.sin[pos0:pos0 + T]
        new_cache = []
        for i, b in enumerate(s.blocks):
            hn = rms(x, b.n1)
            q = b.q(hn).view(B, T, b.h, b.hd).transpose(1, 2)
            k = b.k(hn).view(B, T, b.h, b.hd).transpose(1, 2)
            v = b.v(hn).view(B, T, b.h, b.hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            if cache is not None:
                pk, pv = cache[i]
                if pk is not None:
                    k = torch.cat((pk, k), dim=2)
                    v = torch.cat((pv, v), dim=2)
                new_cache.append((k, v))
            att = (q @ k.transpose(-2, -1)) / math.sqrt(b.hd)
            S = k.shape[2]
            if T > 1:
                mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
                att = att.masked_fill(~mask, float("-inf"))
            y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
            x = x + b.o(y)
            hn = rms(x, b.n2)
            x = x + b.dn(F.silu(b.g(hn)) * b.u(hn))
        return s.head(rms(x, s.nf)), new_cache


def bench_train(m, args):
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=1e-2)
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    def step():
        logits, _ = m(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    dt = (time.perf_counter() - t0) / args.iters
    return {"workload": "train", "ms_per_step": dt * 1e3,
            "tokens_per_s": args.batch * args.seq / dt}


@torch.no_grad()
def bench_sample(m, args, G):
    prompt = torch.randint(0, args.vocab, (1, args.prompt))
    def run():
        logits, cache = m(prompt, cache=[(None, None)] * args.layers)
        cache = [(k.expand(G, -1, -1, -1), v.expand(G, -1, -1, -1)) for k, v in cache]
        tok = torch.multinomial(logits[:, -1].softmax(-1).expand(G, -1), 1)
        pos = args.prompt
        for _ in range(args.new - 1):
            logits, cache = m(tok, cache=cache, pos0=pos)
            tok = torch.multinomial(logits[:, -1].softmax(-1), 1)
            pos += 1
    run()
    t0 = time.perf_counter()
    reps = max(1, args.iters // 2)
    for _ in range(reps):
        run()
    dt = (time.perf_counter() - t0) / reps
    return {"workload": f"sample_g{G}", "ms_per_call": dt * 1e3,
            "tokens_per_s": G * args.new / dt}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=688)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--prompt", type=int, default=192)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = Model(args.vocab, args.dim, args.layers, args.heads, args.hidden,
              max(args.seq, args.prompt + args.new) + 1)
    for r in (bench_train(m, args), bench_sample(m, args, 8), bench_sample(m, args, 1)):
        r["impl"] = "pytorch"
        r["threads"] = args.threads
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
