"""Training throughput and hardware use (MFU) on the embedded default: lorasweep vs a hand-written loop.

    taskset -c 1 python benchmarks/throughput.py run           # the table: 7 CPU-minutes on one core
    taskset -c 1 python benchmarks/throughput.py run --steps 10 --runs 1   # a quick look
    taskset -c 1 python benchmarks/throughput.py breakdown     # where the time goes: 2 CPU-minutes
    taskset -c 1 python benchmarks/throughput.py compile       # compile: false vs true: 12 CPU-minutes

Pin it to one core that nothing else uses if you can: a second torch process on the same core
slows both about 10x, and on a busy machine the wall time grows accordingly (see the cpu clock).

`run`: for LoRA (rank 16, alpha 32, all-linear, dropout 0) and full FT, the training tokens/s of
- lorasweep: a real trial, `lorasweep.trial.run_trial(TrialConfig(...))` on the embedded default
  (batch 16 x 64 tokens, fused AdamW, cosine schedule with 10% warmup, gradient clipping at 1.0,
  `eval_points: 0`, so no evaluation falls inside training), and
- hand-written: a plain PyTorch loop a user would write with PEFT: a deep copy of the same
  in-memory base model, `peft.get_peft_model(model, LoraConfig(...))` with the same LoRA config
  (or every weight trainable for full FT), `torch.optim.AdamW(params, lr, weight_decay)` with its
  default implementation, the same cosine schedule (`get_cosine_schedule_with_warmup`) and clipping,
  fp32, the same seed, over the very same token batches (lorasweep's packer with the trial's seed,
  materialised before timing, so the hand-written loop pays nothing for data).
Both are timed over the same steps: the clock starts after `--warmup` optimizer steps and stops
after the last one (lorasweep's clock through its `on_step` callback), so model copy, adapter
injection and the trial's final evaluation are outside. Each run pairs the two, in alternating
order, in one process, after one untimed warm-up run of each; the table gives medians over `--runs`
and the median of the per-pair ratios. The mean training losses of the two loops are printed to
show they did the same work (they differ only by fused vs for-loop AdamW rounding).

Every figure is taken on two clocks: wall (perf_counter) and cpu (this process's CPU time,
process_time). On a core shared with other processes the wall clock also counts the time they
held the core; with one torch thread the cpu clock does not, so it is the steadier figure there
(the ratio and MFU use the same clock for both sides and for the peak).

MFU = model FLOP/s / the fp32 matmul peak torch reaches on this machine in the same run (square
matmuls of 256..2048, best of 5 each, on the process's threads). Model FLOPs per token, N = weights
used in matmuls (every nn.Linear, lm_head included; the embedding lookup is not a matmul), L
layers, h hidden size, T = 64 tokens per row:
- full FT: 6N + 12·L·h·T (forward 2N, input gradients 2N, weight gradients 2N; attention scores
  and their gradients, counted as non-causal, as in PaLM's MFU);
- LoRA: 4N + 12·L·h·T + 6·N_adapter (frozen weights get input gradients but no weight gradients;
  the adapter's own matmuls forward and backward). The first layer's frozen q, k, v weights need no
  input gradient either (their input, the normed embeddings, needs none): this overcounts by 2.4%.

`breakdown` (on the cpu clock with one thread): per-step time of forward, backward, clipping and the
optimizer step, for-loop and fused AdamW (hand-written loop, same settings); the per-step floor at a
tiny batch (1 x 8 tokens: nearly no FLOPs, so what remains is fixed per-op cost); torch.profiler's
top ops by self CPU time, the time by kind of op, and the FLOP/s reached inside the matmul kernels;
and each GEMM shape of a full-FT step timed alone against the peak.

`compile`: lorasweep's own trial (as in `run`) with `compile: false` and `compile: true`, whole
default-length trials (146 steps) in alternating pairs after one trial of each kind: tokens/s after
the warm-up steps, MFU, and each trial's training time. The first compiled trial in the process pays
the compile; the later ones reuse its graph (same structure), as later trials of a worker do in a
sweep. The kernels go where lorasweep keeps them (`results/cache/inductor`): the first run on a
machine pays a cold compile, later runs find them there; `--cold` starts from an empty directory.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lorasweep.config import TrialConfig
from lorasweep.data import pack_epochs
from lorasweep.modeling import target_modules
from lorasweep.prepare import prepare
from lorasweep.trial import run_trial
from lorasweep.world import default_cache_dir

METHODS = {
    "lora r16 all-linear": {"method": "lora", "rank": 16, "alpha": 32.0, "learning_rate": 3e-3},
    "full": {"method": "full", "learning_rate": 3e-4},
}


def base_config(method: str, steps: int) -> TrialConfig:
    return TrialConfig(**METHODS[method], max_steps=steps, eval_points=0)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    cores = sorted(os.sched_getaffinity(0))
    return (
        f"{cpu}, {len(cores)} core(s) used (affinity {','.join(map(str, cores))} of {os.cpu_count()}), "
        f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
        f"{torch.get_num_threads()} torch thread(s), fp32"
    )


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: this process's CPU seconds


def matmul_peak(
    sizes: tuple[int, ...] = (256, 512, 1024, 2048), repeats: int = 5
) -> dict[str, tuple[float, int]]:
    """Best fp32 FLOP/s of square matmuls on this process's threads, and the size that reached it,
    on each clock."""
    best = dict.fromkeys(CLOCKS, (0.0, 0))
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        inner = max(1, int(2e9 // (2 * n**3)))  # about 2 GFLOP per timing
        torch.mm(a, b, out=out)
        for _ in range(repeats):
            start = {c: clock() for c, clock in CLOCKS.items()}
            for _ in range(inner):
                torch.mm(a, b, out=out)
            for c, clock in CLOCKS.items():
                best[c] = max(best[c], (2 * n**3 * inner / (clock() - start[c]), n))
    return best


def matmul_params(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(base: torch.nn.Module, method: str, adapter: int, length: int) -> float:
    cfg = base.config
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * length
    n = matmul_params(base)
    if method == "full":
        return 6 * n + attention
    return 4 * n + attention + 6 * adapter


def batches_of(prepared, config: TrialConfig) -> list[torch.Tensor]:
    """The token batches lorasweep's trial trains on (no replay): same packer, same seed."""
    return list(
        pack_epochs(prepared.train_docs, config.batch_size, config.max_length, config.max_steps, config.seed)
    )


def lorasweep_run(config: TrialConfig, warmup: int) -> dict:
    """One real trial; tokens/s over the steps after `warmup` (its own clock, through on_step)."""
    marks: dict[int, dict[str, float]] = {}

    def on_step(step: int, _total: int) -> None:
        if step in (warmup, config.max_steps):
            marks[step] = {c: clock() for c, clock in CLOCKS.items()}

    result = run_trial(config, on_step=on_step)
    tokens = (config.max_steps - warmup) * config.batch_size * config.max_length
    return {
        **{c: tokens / (marks[config.max_steps][c] - marks[warmup][c]) for c in CLOCKS},
        "recorded": result.tokens_per_s,
        "train_s": result.train_s,  # wall clock over every step, as the trial records it
        "train_loss": result.train_loss,
        "trainable": result.trainable_params,
    }


def hand_model(prepared, config: TrialConfig) -> torch.nn.Module:
    """The model a user would build: a copy of the base, with PEFT's LoRA unless full FT."""
    torch.manual_seed(config.seed)
    model = copy.deepcopy(prepared.base).train()
    if config.method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=0.0,
        target_modules=target_modules(prepared.base, config.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def hand_setup(model: torch.nn.Module, config: TrialConfig, fused: bool | None = None):
    """Trainable parameters, AdamW (torch's default implementation unless `fused`), cosine schedule."""
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.peak_lr, weight_decay=config.weight_decay, fused=fused)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, round(config.warmup_ratio * config.max_steps), config.max_steps
    )
    return params, optimizer, scheduler


def hand_step(
    model, params, optimizer, scheduler, config: TrialConfig, input_ids: torch.Tensor
) -> torch.Tensor:
    """One optimizer step of the hand-written loop; the loss, detached (no host sync)."""
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def hand_run(prepared, config: TrialConfig, batches: list[torch.Tensor], warmup: int) -> dict:
    """The hand-written PEFT + PyTorch loop, timed over the steps after `warmup`."""
    model = hand_model(prepared, config)
    params, optimizer, scheduler = hand_setup(model, config)
    total = torch.zeros(())
    start = {c: clock() for c, clock in CLOCKS.items()}
    for step, input_ids in enumerate(batches, start=1):
        total += hand_step(model, params, optimizer, scheduler, config, input_ids)
        if step == warmup:
            start = {c: clock() for c, clock in CLOCKS.items()}
    end = {c: clock() for c, clock in CLOCKS.items()}
    tokens = (len(batches) - warmup) * batches[0].numel()
    return {
        **{c: tokens / (end[c] - start[c]) for c in CLOCKS},
        "train_loss": float(total) / len(batches),
        "trainable": sum(p.numel() for p in params),
    }


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # what run_trial sets (threads: 0)
    steps = args.warmup + args.steps
    prepared = prepare(base_config("full", steps))  # builds the base model on first use
    print(machine())
    peaks = [matmul_peak()]  # measured again after every pair; the best one is the peak
    print(
        f"{args.runs} paired runs per method, {args.steps} timed steps after {args.warmup} warm-up steps, "
        f"batch 16 x 64 tokens\n",
        flush=True,
    )
    rows = []
    for name in METHODS:
        config = base_config(name, steps).resolved(0)
        batches = batches_of(prepared, config)
        # untimed warm-up of both paths: first-call costs (imports, allocator, kernel selection)
        warm = dataclasses.replace(config, max_steps=args.warmup + 2, train_tokens=(args.warmup + 2) * 1024)
        lorasweep_run(warm, args.warmup)
        hand_run(prepared, warm, batches[: args.warmup + 2], args.warmup)
        ours, hand = [], []
        for i in range(args.runs):
            order = ("lorasweep", "hand") if i % 2 == 0 else ("hand", "lorasweep")
            for who in order:
                if who == "lorasweep":
                    ours.append(lorasweep_run(config, args.warmup))
                else:
                    hand.append(hand_run(prepared, config, batches, args.warmup))
            a, b = ours[-1], hand[-1]
            print(
                f"  {name} run {i + 1} ({' first, '.join(order)} second): tok/s lorasweep {a['wall']:,.0f} wall, "
                f"{a['cpu']:,.0f} CPU (trial records {a['recorded']:,.0f} over all steps); hand-written "
                f"{b['wall']:,.0f} wall, {b['cpu']:,.0f} CPU; ratio {a['wall'] / b['wall']:.3f} wall, "
                f"{a['cpu'] / b['cpu']:.3f} CPU; mean train loss {a['train_loss']:.5f} vs {b['train_loss']:.5f}",
                flush=True,
            )
            peaks.append(matmul_peak())
        assert ours[-1]["trainable"] == hand[-1]["trainable"], "the two loops train different parameters"
        per_token = flops_per_token(prepared.base, config.method, ours[-1]["trainable"], config.max_length)
        for c in CLOCKS:
            rows.append(
                (
                    c,
                    name,
                    statistics.median(r[c] for r in ours),
                    statistics.median(r[c] for r in hand),
                    statistics.median(a[c] / b[c] for a, b in zip(ours, hand)),
                    per_token,
                )
            )
    print()
    for c in CLOCKS:
        found = [p[c] for p in peaks]
        best, size = max(found)
        print(
            f"fp32 matmul peak ({c} clock): {best / 1e9:.1f} GFLOP/s ({size}x{size}; best of {len(found)} "
            f"measurements through the run, the lowest {min(found)[0] / 1e9:.1f})"
        )
    n = matmul_params(prepared.base)
    print(f"model: {sum(p.numel() for p in prepared.base.parameters()):,} parameters, N = {n:,} in matmuls")
    print(
        "\n| method | clock | lorasweep tok/s | hand-written tok/s | ratio | MFU lorasweep | MFU hand-written "
        "| peak GFLOP/s | model FLOPs/token |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for c, name, ours_tps, hand_tps, ratio, per_token in sorted(rows, key=lambda r: r[0], reverse=True):
        peak = max(p[c] for p in peaks)[0]
        print(
            f"| {name} | {c} | {ours_tps:,.0f} | {hand_tps:,.0f} | {ratio:.3f} "
            f"| {100 * ours_tps * per_token / peak:.1f}% | {100 * hand_tps * per_token / peak:.1f}% "
            f"| {peak / 1e9:.1f} | {per_token / 1e6:.2f} M |"
        )
    print(
        "\nratio: median over the runs of lorasweep / hand-written within a pair; tok/s: medians; cpu: tokens "
        "per second of this process's CPU time (with one thread, the wall clock minus the time other "
        f"processes held the core). Machine: {machine()}."
    )


# ---- breakdown: where the time goes ----------------------------------------------------------


def phases(
    prepared, config: TrialConfig, batches: list[torch.Tensor], warmup: int, clock=time.perf_counter
) -> dict[str, float]:
    """Seconds per step of forward (with the loss), backward, clipping and optimizer step + zero_grad."""
    model = hand_model(prepared, config)
    params, optimizer, scheduler = hand_setup(model, config)
    fused = torch.optim.AdamW(params, lr=config.peak_lr, weight_decay=config.weight_decay, fused=True)
    spent = dict.fromkeys(("forward", "backward", "clip", "optimizer (for-loop AdamW)"), 0.0)
    spent["optimizer (fused AdamW)"] = 0.0
    for step, input_ids in enumerate(batches, start=1):
        t0 = clock()
        loss = model(input_ids=input_ids, labels=input_ids).loss
        t1 = clock()
        loss.backward()
        t2 = clock()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        t3 = clock()
        # both optimizers step on the same gradients (the weights move twice: the cost is the same)
        optimizer.step()
        t4 = clock()
        fused.step()
        t5 = clock()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step > warmup:
            for key, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                spent[key] += seconds
    timed = len(batches) - warmup
    return {key: seconds / timed for key, seconds in spent.items()}


CATEGORIES = {
    "matmul (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention (SDPA)": (
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    ),
    "elementwise (mul, add, silu, pow, rsqrt, neg, div, copy, cat, fill, ...)": (
        "aten::mul",
        "aten::add",
        "aten::add_",
        "aten::silu",
        "aten::silu_backward",
        "aten::pow",
        "aten::rsqrt",
        "aten::neg",
        "aten::div",
        "aten::copy_",
        "aten::cat",
        "aten::fill_",
        "aten::mean",
        "aten::sum",
        "aten::mul_",
        "aten::zero_",
        "aten::clone",
        "aten::slice_backward",
        "aten::sub",
    ),
    "optimizer and clipping": ("aten::_fused_adamw_", "aten::_foreach_norm", "aten::_foreach_mul_"),
    "other": (),
}


def profile_ops(prepared, config: TrialConfig, batches: list[torch.Tensor], warmup: int, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    model = hand_model(prepared, config)
    params, optimizer, scheduler = hand_setup(model, config, fused=True)  # as lorasweep steps

    def step(input_ids: torch.Tensor) -> None:
        hand_step(model, params, optimizer, scheduler, config, input_ids)

    for input_ids in batches[:warmup]:
        step(input_ids)
    timed = batches[warmup:]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for input_ids in timed:
            step(input_ids)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) / 1e6
    calls = sum(e.count for e in events if e.key.startswith("aten::"))
    gemm = [e for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")]
    gemm_s = sum(e.self_cpu_time_total for e in gemm) / 1e6
    print(
        f"\n#### {config.method}: torch.profiler over {len(timed)} steps (fused AdamW, as lorasweep)\n\n"
        f"wall {1e3 * wall / len(timed):.1f} ms/step under the profiler; {calls / len(timed):,.0f} aten op "
        f"calls per step ({1e6 * wall / calls:.1f} us per call on average)\n"
    )
    print("| op | self CPU ms/step | share of self time | calls/step |")
    print("|---|---|---|---|")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        print(
            f"| {e.key} | {e.self_cpu_time_total / 1e3 / len(timed):.2f} "
            f"| {100 * e.self_cpu_time_total / 1e6 / total_self:.1f}% | {e.count / len(timed):.0f} |"
        )
    cfg = prepared.base.config
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * config.max_length  # in SDPA, not in mm
    adapter = sum(p.numel() for p in params) if config.method != "full" else 0
    per_token = flops_per_token(prepared.base, config.method, adapter, config.max_length) - attention
    tokens = timed[0].numel() * len(timed)
    shares = dict.fromkeys(CATEGORIES, 0.0)
    for e in events:
        kind = next((k for k, names in CATEGORIES.items() if e.key in names), "other")
        shares[kind] += e.self_cpu_time_total / 1e6 / total_self
    print(
        "\nself CPU time by kind: "
        + ", ".join(f"{kind} {100 * share:.0f}%" for kind, share in shares.items())
        + f"\nmatmul FLOPs (attention excluded) / time in the matmul kernels: "
        f"{per_token * tokens / gemm_s / 1e9:.1f} GFLOP/s"
    )


def gemm_shapes(prepared, config: TrialConfig) -> list[tuple[str, int, int, int, int]]:
    """(what, M, K, N, calls per step) of every GEMM of one full-FT training step (M x K times K x N)."""
    cfg = prepared.base.config
    t = config.batch_size * config.max_length
    h, f, v, layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    linears = {
        "q/k/v/o": (h, h, 4 * layers),
        "gate/up": (h, f, 2 * layers),
        "down": (f, h, layers),
        "lm_head": (h, v, 1),
    }
    shapes = []
    for name, (d_in, d_out, calls) in linears.items():
        shapes.append((f"{name} forward", t, d_in, d_out, calls))
        shapes.append((f"{name} input grad", t, d_out, d_in, calls))
        shapes.append((f"{name} weight grad", d_out, t, d_in, calls))
    return shapes


def gemm_alone(shapes, peak: float, clock=time.perf_counter) -> float:
    """Prints each shape's FLOP/s timed alone; returns the seconds all of a step's GEMMs take so."""
    print("\n| GEMM | M x K x N | calls/step | alone GFLOP/s | of peak |")
    print("|---|---|---|---|---|")
    total = 0.0
    for what, m, k, n, calls in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)
        inner = max(1, int(5e8 // (2 * m * k * n)))
        best = 0.0
        for _ in range(5):
            start = clock()
            for _ in range(inner):
                torch.mm(a, b, out=out)
            best = max(best, 2 * m * k * n * inner / (clock() - start))
        total += calls * 2 * m * k * n / best
        print(f"| {what} | {m} x {k} x {n} | {calls} | {best / 1e9:.1f} | {100 * best / peak:.0f}% |")
    return total


def breakdown(args: argparse.Namespace) -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    steps = args.warmup + args.steps
    prepared = prepare(base_config("full", steps))
    print(machine())
    # one thread: CPU time of this process, so that other processes on the core do not count
    clock = "cpu" if torch.get_num_threads() == 1 else "wall"
    peak, size = max(matmul_peak()[clock], matmul_peak()[clock])
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({size}x{size}); times below on the {clock} clock\n")
    print(
        "| method | forward ms | backward ms | clip ms | AdamW for-loop ms | AdamW fused ms "
        "| step ms (fused) | step ms at 1 x 8 tokens |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in METHODS:
        config = base_config(name, steps).resolved(0)
        batches = batches_of(prepared, config)
        phases(prepared, config, batches[: args.warmup + 2], args.warmup, CLOCKS[clock])  # warm-up
        spent = phases(prepared, config, batches, args.warmup, CLOCKS[clock])
        tiny = [b[:1, :8].contiguous() for b in batches]
        fused_step = sum(v for k, v in spent.items() if "for-loop" not in k)
        floor = sum(
            v
            for k, v in phases(prepared, config, tiny, args.warmup, CLOCKS[clock]).items()
            if "for-loop" not in k
        )
        if config.method == "full":
            full_step = fused_step
        print(
            f"| {name} | "
            + " | ".join(f"{1e3 * v:.2f}" for v in spent.values())
            + f" | {1e3 * fused_step:.2f} "
            f"| {1e3 * floor:.2f} |",
            flush=True,
        )
    for name in METHODS:
        config = base_config(name, steps).resolved(0)
        profile_ops(prepared, config, batches_of(prepared, config), args.warmup, args.top)
    config = base_config("full", steps).resolved(0)
    print("\nThe GEMMs of one full-FT step, each shape timed alone (best of 5):")
    gemm_s = gemm_alone(gemm_shapes(prepared, config), peak, CLOCKS[clock])
    per_token = flops_per_token(prepared.base, "full", 0, config.max_length)
    tokens = config.batch_size * config.max_length
    print(
        f"\nfull FT: all GEMMs of a step, each at its alone speed, take {1e3 * gemm_s:.1f} ms, "
        f"{100 * gemm_s / full_step:.0f}% of the measured step ({1e3 * full_step:.1f} ms, MFU "
        f"{100 * per_token * tokens / full_step / peak:.0f}%); the rest is the work around them"
    )


def compiled(args: argparse.Namespace) -> None:
    """lorasweep's trial with `compile: false` and `compile: true`, in alternating pairs."""
    # where lorasweep keeps inductor's kernels (under its cache dir), or an empty one for --cold
    kernels = (
        Path(tempfile.mkdtemp(prefix="inductor-cold-")) if args.cold else default_cache_dir() / "inductor"
    )
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(kernels.resolve())
    cached = sum(1 for f in kernels.rglob("*") if f.is_file()) if kernels.exists() else 0
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    clock = "cpu" if torch.get_num_threads() == 1 else "wall"
    steps = args.warmup + args.steps
    prepared = prepare(base_config("full", steps))
    print(machine())
    print(
        f"inductor cache {kernels}: {cached} files at the start ({'cold' if not cached else 'warm'}); "
        f"{args.runs} pairs per method of {steps}-step trials, tok/s over the {args.steps} steps after "
        f"{args.warmup}, on the {clock} clock\n",
        flush=True,
    )
    peaks = [matmul_peak()]
    rows = []
    for name in METHODS:
        config = base_config(name, steps).resolved(0)
        kinds = {"eager": config, "compiled": dataclasses.replace(config, compile=True)}
        # the first trial of each kind in this process: the compiled one pays the compile
        first = {kind: lorasweep_run(c, args.warmup) for kind, c in kinds.items()}
        runs: dict[str, list[dict]] = {"eager": [], "compiled": []}
        for i in range(args.runs):
            for kind in ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager"):
                runs[kind].append(lorasweep_run(kinds[kind], args.warmup))
            e, c = runs["eager"][-1], runs["compiled"][-1]
            print(
                f"  {name} pair {i + 1}: tok/s eager {e[clock]:,.0f}, compiled {c[clock]:,.0f} "
                f"({c[clock] / e[clock]:.3f}x); mean train loss {e['train_loss']:.5f} vs {c['train_loss']:.5f}",
                flush=True,
            )
            peaks.append(matmul_peak())
        later = statistics.median(r["train_s"] for r in runs["compiled"])
        per_token = flops_per_token(
            prepared.base, config.method, first["eager"]["trainable"], config.max_length
        )
        rows.append(
            (
                name,
                first["compiled"]["train_s"] - later,
                statistics.median(r["train_s"] for r in runs["eager"]),
                later,
                *(statistics.median(r[clock] for r in runs[kind]) for kind in ("eager", "compiled")),
                statistics.median(c[clock] / e[clock] for e, c in zip(runs["eager"], runs["compiled"])),
                per_token,
            )
        )
    peak, size = max(p[clock] for p in peaks)
    print(
        f"\nfp32 matmul peak ({clock} clock): {peak / 1e9:.1f} GFLOP/s ({size}x{size}, best of {len(peaks)})"
    )
    print(
        "\n| method | compile s (first compiled trial) | trial train s eager | trial train s compiled "
        "| eager tok/s | compiled tok/s | speed-up | MFU eager | MFU compiled |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, compile_s, eager_s, compiled_s, eager, fast, ratio, per_token in rows:
        print(
            f"| {name} | {compile_s:.1f} | {eager_s:.1f} | {compiled_s:.1f} | {eager:,.0f} | {fast:,.0f} "
            f"| {ratio:.3f}x | {100 * eager * per_token / peak:.1f}% | {100 * fast * per_token / peak:.1f}% |"
        )
    print(
        "\ncompile s: the first compiled trial's training time less the median of the later ones (they "
        "reuse its graph); trial train s: training time of a whole trial (wall clock, evaluation "
        "excluded), median; tok/s and speed-up: medians over the pairs, steps after the warm-up."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command, steps in (("run", 80), ("breakdown", 30), ("compile", 141)):
        p = sub.add_parser(command)
        p.add_argument("--steps", type=int, default=steps, help="timed optimizer steps")
        p.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps before them")
        if command in ("run", "compile"):
            p.add_argument("--runs", type=int, default=3, help="paired runs per method (median)")
        if command == "compile":
            p.add_argument("--cold", action="store_true", help="start from an empty inductor cache")
        elif command == "breakdown":
            p.add_argument("--top", type=int, default=12, help="ops listed from the profile")
    args = parser.parse_args()
    {"run": run, "breakdown": breakdown, "compile": compiled}[args.command](args)


if __name__ == "__main__":
    main()
