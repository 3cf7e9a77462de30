"""The peers of benchmarks/speed.py: PyTorch's nn.RNN/LSTM/GRU (the usual training step,
evaluation under ``no_grad``, the usual per-step sampling loop) and, when installed, flax's
own cells, all on the shapes below. Each ``make_*`` returns ``(run, extras)``: ``run(n)``
does n calls and returns their seconds; the first call (compilation, warm-up) is done."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

V, E, B, T, LAYERS = 65, 64, 32, 128, 2
PRIME = np.arange(16) % V  # the sampling prime
TORCH_RNN = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def make_flax_train(cell, hidden):
    """The usual flax way to write this model: ``nn.Embed``, ``nn.RNN`` over flax's own cells
    (``OptimizedLSTMCell``, ``GRUCell``, ``SimpleCell``), ``nn.Dense``, autodiff, the same
    optax Adam + clipping, the carry passed between windows."""
    import optax
    from flax import linen as nn

    cell_type = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[cell]

    class LM(nn.Module):
        @nn.compact
        def __call__(self, ids, carry):
            x, new_carry = nn.Embed(V, E)(ids), []
            for l in range(LAYERS):
                c, x = nn.RNN(cell_type(hidden), return_carry=True)(x, initial_carry=carry[l])
                new_carry.append(c)
            return nn.Dense(V)(x), tuple(new_carry)

    model = LM()
    ids = jax.random.randint(jax.random.key(1), (2, B, T), 0, V, jnp.int32)
    carry = tuple(cell_type(hidden).initialize_carry(jax.random.key(0), (B, E))
                  for _ in range(LAYERS))
    params = model.init(jax.random.key(0), ids[0], carry)
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(2e-3))

    def loss_fn(params, x, y, carry):
        logits, carry = model.apply(params, x, carry)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), carry

    def step(params, opt_state, carry, x, y):
        (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, carry)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, carry, loss

    box = [params, tx.init(params), carry]
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*box, ids[0], ids[1]).compile()
    compile_s = time.perf_counter() - t0

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            *state, loss = compiled(*box, ids[0], ids[1])
            box[:] = state
        loss.block_until_ready()
        return time.perf_counter() - t0

    run(1)
    return run, {"compile_s": compile_s}


def have_flax() -> bool:
    try:
        import flax.linen  # noqa: F401
    except ImportError:
        return False
    return True


TORCH_DEVICE = torch.device("cpu")


def use_cuda():
    """Run the torch peers on cuda (cuDNN kernels), both frameworks in true float32: TF32 is
    torch's cuDNN default (and JAX's on GPU unless JAX_DEFAULT_MATMUL_PRECISION=float32, which
    gpu.sh sets)."""
    global TORCH_DEVICE
    TORCH_DEVICE = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _torch_sync():
    """Wait for queued GPU work, so a timer measures it."""
    if TORCH_DEVICE.type == "cuda":
        torch.cuda.synchronize()


class TorchLM(torch.nn.Module):
    def __init__(self, cell, hidden):
        super().__init__()
        self.embed = torch.nn.Embedding(V, E)
        self.rnn = TORCH_RNN[cell](E, hidden, num_layers=LAYERS, batch_first=True)
        self.head = torch.nn.Linear(hidden, V)

    def forward(self, ids, state=None):
        out, state = self.rnn(self.embed(ids), state)
        return self.head(out), state


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def make_torch_train(cell, hidden, bfloat16=False):
    """torch's usual step; ``bfloat16``: the forward under ``torch.autocast`` (bfloat16
    matmuls and recurrent kernels, float32 master weights), the peer of lstm_fn's
    ``matmul_precision="bfloat16"``."""
    torch.manual_seed(0)
    model = TorchLM(cell, hidden).to(TORCH_DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ids = torch.randint(0, V, (2, B, T), device=TORCH_DEVICE)
    box = [None]

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.autocast(TORCH_DEVICE.type, torch.bfloat16, enabled=bfloat16):
                logits, state = model(ids[0], box[0])
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V),
                                                     ids[1].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            box[0] = _detach(state)  # truncated BPTT: the carry crosses windows, gradients not
        _torch_sync()
        return time.perf_counter() - t0

    first = run(1)
    return run, {"first_step_s": first}


def make_torch_eval(cell, hidden):
    torch.manual_seed(0)
    model = TorchLM(cell, hidden).to(TORCH_DEVICE).eval()
    ids = torch.randint(0, V, (2, B, T), device=TORCH_DEVICE)
    box = [None]

    def run(n):
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                logits, box[0] = model(ids[0], box[0])
                torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[1].reshape(-1))
        _torch_sync()
        return time.perf_counter() - t0

    run(1)
    return run, {}


def make_torch_sample(hidden, batch, length):
    torch.manual_seed(0)
    model = TorchLM("lstm", hidden).to(TORCH_DEVICE).eval()

    def one(n_chars):
        t0 = time.perf_counter()
        first_s = None
        with torch.no_grad():
            prime = torch.as_tensor(PRIME, device=TORCH_DEVICE)[None].expand(batch, -1)
            logits, state = model(prime)
            for _ in range(n_chars):
                ids = torch.multinomial(torch.softmax(logits[:, -1], dim=-1), 1)  # [S, 1]
                ids.tolist()  # the caller would write this character out now
                first_s = first_s or time.perf_counter() - t0
                logits, state = model(ids, state)
        return time.perf_counter() - t0, first_s

    one(8)

    def run(n):
        return sum(one(length)[0] for _ in range(n))

    return run, {"first_char_s": one(1)[1]}
