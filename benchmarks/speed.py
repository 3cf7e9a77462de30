"""Training, evaluation and sampling speed of lstm_fn against PyTorch, in one process.

    python benchmarks/speed.py [--quick] [--json] [--only "train lstm-256"]

Every config runs its variants (lstm_fn autodiff, lstm_fn manual BPTT, torch; the last two
in bfloat16; flax when it is installed) in alternating rounds, a different order each
round, and reports the median over rounds, so slow phases of a shared machine hit all
variants alike. Inputs are uniform random ids (speed does not
depend on the text). Not a test: numbers, not assertions.

Progress goes to stderr, a markdown table (or JSON) to stdout. Columns: chars/s = B*T per
step / step time; GFLOP/s counts the matmuls only (forward ``2*T*B*(In*GH + H*GH)`` per
layer plus the head; training = 3x forward) and is also given as a fraction of the
``jnp.dot`` 2048x2048 float32 rate measured in the same run; compile =
``jit(step).lower(...).compile()`` seconds (trace, lower, compile); XLA temp = the compiled step's scratch memory
(``memory_analysis``); max RSS = the process's high-water mark so far (``getrusage``):
cumulative over everything run before, both frameworks, not a per-config figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

from lstm_fn.cli.host import reuse_freed_memory  # noqa: E402
from lstm_fn.config import TrainConfig  # noqa: E402
from lstm_fn.nn import model as M  # noqa: E402
from lstm_fn.nn.config import ModelConfig  # noqa: E402
from lstm_fn.training.state import TrainState  # noqa: E402
from lstm_fn.training.step import make_train_step  # noqa: E402
import peers  # noqa: E402
from peers import (B, E, LAYERS, PRIME, T, V, have_flax, make_flax_train,  # noqa: E402
                   make_torch_eval, make_torch_sample, make_torch_train)
from report import format_row, markdown  # noqa: E402
from reference_numpy import spec  # noqa: E402

def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, busy CPU-seconds of the whole machine from /proc/stat, this process's CPU s)."""
    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), busy, usage.ru_utime + usage.ru_stime


def matmul_peak(calls: int = 8) -> float:
    """Median GFLOP/s of a jitted float32 2048x2048 ``jnp.dot``."""
    a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        dot(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def forward_flops(cell: str, hidden: int, batch: int, steps: int) -> float:
    gh = spec.num_gates(cell) * hidden
    layers = sum(2 * (inp + hidden) * gh for inp in [E] + [hidden] * (LAYERS - 1))
    return batch * steps * (layers + 2 * hidden * V)


# ------------------------------------------------------------------------ variants
# Each make_* returns (run(n) -> seconds for n steps, info dict); run(1) is warm.


def make_jax_train(cell, hidden, gradients, precision="float32"):
    cfg = ModelConfig(cell, V, E, hidden, LAYERS)
    tcfg = TrainConfig(batch_size=B, seq_len=T, steps=10**6, grad_clip=5.0, gradients=gradients,
                       matmul_precision=precision)
    state = TrainState.fresh(M.init(jax.random.key(0), cfg), cfg, tcfg)
    ids = jax.random.randint(jax.random.key(1), (2, B, T), 0, V, jnp.int32)
    reset = jnp.asarray(False)
    t0 = time.perf_counter()
    lr = jnp.float32(tcfg.learning_rate)
    compiled = make_train_step(cfg, tcfg).lower(state, ids[0], ids[1], reset, lr).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    box = [state]

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            box[0], metrics = compiled(box[0], ids[0], ids[1], reset, lr)
        jax.block_until_ready(metrics["loss"])
        return time.perf_counter() - t0

    run(1)
    temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    return run, {"compile_s": compile_s, "xla_temp_mb": temp / 2**20 if temp else None}


def make_jax_eval(cell, hidden, forward="model"):
    """Forward only: ``model.loss`` (the plain scan), or with ``forward="bptt"`` the forward
    of ``bptt.manual_loss`` (what ``training.evaluate`` runs)."""
    cfg = ModelConfig(cell, V, E, hidden, LAYERS)
    params = M.init(jax.random.key(0), cfg)
    ids = jax.random.randint(jax.random.key(1), (2, B, T), 0, V, jnp.int32)
    if forward == "bptt":
        from lstm_fn.nn.bptt import manual_loss
        loss = lambda p, c, x, y: manual_loss(p, cfg, x, y, c)  # noqa: E731
    else:
        loss = lambda p, c, x, y: M.loss(p, cfg, x, y, c)  # noqa: E731
    t0 = time.perf_counter()
    fn = jax.jit(loss).lower(
        params, M.initial_state(cfg, B), ids[0], ids[1]).compile()
    compile_s = time.perf_counter() - t0
    box = [M.initial_state(cfg, B)]

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            value, box[0] = fn(params, box[0], ids[0], ids[1])
        value.block_until_ready()
        return time.perf_counter() - t0

    run(1)
    return run, {"compile_s": compile_s}


def make_jax_sample(hidden, batch, length):
    from lstm_fn.nn.generate import generate
    cfg = ModelConfig("lstm", V, E, hidden, LAYERS)
    params = M.init(jax.random.key(0), cfg)

    def one(n_chars):
        t0 = time.perf_counter()
        chunks = generate(params, cfg, PRIME, n_chars, key=jax.random.key(2), num_samples=batch)
        next(chunks)  # the first chunk (256 steps by default) arrives whole
        first_s = time.perf_counter() - t0
        for _ in chunks:
            pass
        return time.perf_counter() - t0, first_s

    _, cold_first = one(length)  # compiles warm_up and the chunk programs

    def run(n):
        return sum(one(length)[0] for _ in range(n))

    return run, {"first_char_cold_s": cold_first, "first_char_s": one(length)[1]}


# ------------------------------------------------------------------------ driver


def measure(name, variants, chars_per_call, rounds, calls, flops=None, log=print):
    """Build the variants, then alternate them for ``rounds`` rounds (a different one first
    each round); one row per variant with the median chars/s."""
    built = {label: make() for label, make in variants.items()}
    speeds = {label: [] for label in built}
    order = list(built)
    for r in range(rounds):
        for label in order[r % len(order):] + order[:r % len(order)]:
            speeds[label].append(chars_per_call * calls / built[label][0](calls))
    rows = []
    for label, (_, info) in built.items():
        median = statistics.median(speeds[label])
        row = {"config": name, "variant": label, "chars_per_s": median,
               "rounds": [round(s) for s in speeds[label]], **info, "max_rss_mb": max_rss_mb()}
        if flops:
            row["gflops"] = flops * median / chars_per_call / 1e9
        rows.append(row)
    speed = {r["variant"]: r["chars_per_s"] for r in rows}
    for row in rows:  # against torch at the same precision
        peer = "torch bf16" if row["variant"].endswith("bf16") else "torch"
        if peer in speed and not row["variant"].startswith("torch"):
            row["vs_torch"] = row["chars_per_s"] / speed[peer]
        log(format_row(row))
    return rows


def measure_all(wanted, rounds: int, calls: int, length: int, log) -> list[dict]:
    """Every config whose name ``wanted`` accepts: training (each cell and width), evaluation
    and sampling, each with its variants in alternating rounds."""
    results = []
    for cell in ("rnn", "lstm", "gru"):
        for hidden in (256, 512):
            name = f"train {cell}-{hidden}"
            if wanted(name):
                results += measure(name, {
                    "lstm_fn autodiff": lambda: make_jax_train(cell, hidden, "autodiff"),
                    "lstm_fn manual": lambda: make_jax_train(cell, hidden, "manual"),
                    "torch": lambda: make_torch_train(cell, hidden),
                    "lstm_fn manual bf16": lambda: make_jax_train(cell, hidden, "manual",
                                                                  "bfloat16"),
                    "torch bf16": lambda: make_torch_train(cell, hidden, bfloat16=True),
                    **({"flax": lambda: make_flax_train(cell, hidden)} if have_flax() else {}),
                }, B * T, rounds, calls, 3 * forward_flops(cell, hidden, B, T), log)
    if wanted("eval lstm-256"):
        results += measure("eval lstm-256", {
            "lstm_fn evaluate": lambda: make_jax_eval("lstm", 256, "bptt"),
            "lstm_fn plain scan": lambda: make_jax_eval("lstm", 256),
            "torch": lambda: make_torch_eval("lstm", 256)},
                           B * T, rounds, 2 * calls, forward_flops("lstm", 256, B, T), log)
    for batch in (1, 64):
        name = f"sample lstm-256 S={batch}"
        if wanted(name):
            results += measure(name, {"lstm_fn": lambda: make_jax_sample(256, batch, length),
                                      "torch": lambda: make_torch_sample(256, batch, length)},
                               batch * length, rounds, 1, log=log)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (~2-3 min)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--only", help="run only configs whose name contains this")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's malloc as it is (by default both frameworks run "
                             "with lstm_fn.cli.host.reuse_freed_memory, as the CLI does)")
    parser.add_argument("--gpu", action="store_true",
                        help="torch on cuda (cuDNN) against JAX's GPU backend")
    args = parser.parse_args(argv)
    malloc = "glibc default" if args.system_malloc else (
        "reuse_freed_memory" if reuse_freed_memory() else "default (not glibc)")
    if args.gpu:
        if not torch.cuda.is_available() or jax.default_backend() != "gpu":
            sys.exit(f"--gpu: torch sees cuda: {torch.cuda.is_available()}, "
                     f"jax backend: {jax.default_backend()}")
        peers.use_cuda()
    torch.set_num_threads(os.cpu_count())
    rounds, calls = (5, 1) if args.quick else (7, 3)
    length = 256 if args.quick else 512
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    wanted = lambda name: args.only is None or args.only in name  # noqa: E731
    start = cpu_snapshot()
    peaks = [matmul_peak()]
    log(f"jax {jax.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs; "
        f"jnp.dot 2048^2 float32: {peaks[0]:.0f} GFLOP/s")
    results = measure_all(wanted, rounds, calls, length, log)
    peaks.append(matmul_peak())
    end = cpu_snapshot()
    for row in results:
        if "gflops" in row:
            row["peak_fraction"] = row["gflops"] / max(peaks)
    meta = {"jax": jax.__version__, "torch": torch.__version__, "cpus": os.cpu_count(),
            "device": str(jax.devices()[0].device_kind),
            "torch_threads": torch.get_num_threads(), "malloc": malloc,
            "quick": args.quick, "rounds": rounds,
            "steps_per_round": calls, "sample_length": length, "B": B, "T": T, "E": E, "V": V,
            "layers": LAYERS, "matmul_peak_gflops": [round(p) for p in peaks],
            "wall_s": end[0] - start[0],
            "other_load_cpus": ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0])}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=1))
    else:
        print(markdown(results, meta))
    log(f"total {meta['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
