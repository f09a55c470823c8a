"""A small Flax MLP classifier whose penultimate layer is the representation that SAEs study.

    x → [Linear → ReLU] × len(hidden) → Linear (M neurons, the representation y) [→ ReLU] → logits

``representation="linear"`` leaves y unconstrained (the feature map of identifiability theory:
cross-entropy training makes it an affine image of the latents); ``"relu"`` gives non-negative
neurons, as in the hidden layers of most real networks. Training is a pure jitted step (AdamW,
cross-entropy), run in scanned chunks so the host only reports progress.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Float, Int, PRNGKeyArray

from superjax import _checks

REPRESENTATIONS = ("linear", "relu")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and training of the classifier.

    Attributes:
      d_in: input dimension; classes: number of labels; neurons: width M of the representation.
      hidden: widths of the ReLU layers before the representation.
      representation: "linear" or "relu" (see the module docstring).
      steps, batch_size, learning_rate, weight_decay: AdamW on the cross-entropy, cosine decay.
      seed: initialisation and batch order.
    """

    d_in: int
    classes: int
    neurons: int
    hidden: tuple[int, ...] = (128, 128)
    representation: str = "linear"
    steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        _checks.positive_int("d_in", self.d_in)
        _checks.positive_int("classes", self.classes, minimum=2)
        _checks.positive_int("neurons", self.neurons, maximum=65536)
        for width in self.hidden:
            _checks.positive_int("hidden width", width)
        _checks.one_of("representation", self.representation, REPRESENTATIONS)
        _checks.positive_int("steps", self.steps)
        _checks.positive_int("batch_size", self.batch_size)
        _checks.real_number("learning_rate", self.learning_rate, minimum=0.0, strict_min=True)
        _checks.real_number("weight_decay", self.weight_decay, minimum=0.0)
        _checks.positive_int("seed", self.seed, minimum=0)


class ClassifierOutput(NamedTuple):
    logits: Float[Array, "b c"]
    representation: Float[Array, "b m"]


class Classifier(nnx.Module):
    def __init__(self, config: ClassifierConfig, *, rngs: nnx.Rngs):
        self.config = config
        widths = (config.d_in, *config.hidden)
        layers = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nnx.Linear(a, b, rngs=rngs), jax.nn.relu]
        self.trunk = nnx.Sequential(*layers) if layers else None
        self.represent_layer = nnx.Linear(widths[-1], config.neurons, rngs=rngs)
        self.head = nnx.Linear(config.neurons, config.classes, rngs=rngs)

    def __call__(self, x: Float[Array, "b d"]) -> ClassifierOutput:
        h = self.trunk(x) if self.trunk is not None else x
        y = self.represent_layer(h)
        if self.config.representation == "relu":
            y = jax.nn.relu(y)
        return ClassifierOutput(self.head(y), y)


class Trained(NamedTuple):
    model: Classifier
    history: list[dict[str, float]]


def train(config: ClassifierConfig, x: Float[Array, "s d"], labels: Int[Array, " s"], *,
          progress: bool = True, chunk: int = 100) -> Trained:
    """Trains the classifier on (x, labels) with minibatches drawn by step from the seed."""
    x = _checks.float_array("x", x, ndims=(2,))
    _checks.same_size("x columns", x.shape[1], "d_in", config.d_in)
    labels = _checks.int_labels(labels, x.shape[0], config.classes)

    def draw(key):
        idx = jax.random.randint(key, (config.batch_size,), 0, x.shape[0])
        return x[idx], labels[idx]

    return _fit(config, draw, progress=progress, chunk=chunk)


def train_online(config: ClassifierConfig, sampler: Callable[[PRNGKeyArray, int], tuple],
                 *, progress: bool = True, chunk: int = 100) -> Trained:
    """Trains the classifier on a fresh batch every step: ``sampler(key, size)`` returns
    (x of shape (size, d_in), integer labels of shape (size,)) and must be traceable by jit.
    Where data can be generated (a synthetic world) this minimises the population loss itself:
    no sample is seen twice, so the network cannot overfit one training set."""
    def draw(key):
        return sampler(key, config.batch_size)

    got = jax.eval_shape(draw, jax.random.key(0))
    want = ((config.batch_size, config.d_in), (config.batch_size,))
    if (not isinstance(got, tuple) or len(got) != 2
            or tuple(tuple(g.shape) for g in got) != want
            or not jnp.issubdtype(got[1].dtype, jnp.integer)):
        raise ValueError(f"sampler(key, {config.batch_size}) must return (x, labels) of shapes "
                         f"{want[0]} and {want[1]} with integer labels; got {got}")
    return _fit(config, draw, progress=progress, chunk=chunk)


def _fit(config: ClassifierConfig, draw, *, progress: bool, chunk: int) -> Trained:
    """AdamW on the cross-entropy of the batches ``draw(key)`` gives, keyed by step."""
    from tqdm.auto import tqdm

    schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps, alpha=0.05)
    tx = optax.adamw(schedule, weight_decay=config.weight_decay)
    model = Classifier(config, rngs=nnx.Rngs(config.seed))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    order = jax.random.fold_in(jax.random.key(config.seed), 1)

    def loss_fn(params, xb, yb):
        logits = nnx.merge(graphdef, params)(xb).logits
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == yb)

    def step(carry, s):
        params, opt_state = carry
        xb, yb = draw(jax.random.fold_in(order, s))
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (loss, acc)

    @functools.partial(jax.jit, static_argnums=2)
    def run_chunk(carry, first, length):
        return jax.lax.scan(step, carry, first + jnp.arange(length))

    carry, history = (params, tx.init(params)), []
    bar = tqdm(total=config.steps, disable=not progress, unit="step", desc="classifier")
    for first in range(0, config.steps, chunk):
        done = min(first + chunk, config.steps)
        carry, (loss, acc) = run_chunk(carry, first, done - first)
        row = {"step": done, "loss": float(loss[-1]), "batch_accuracy": float(acc.mean())}
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"classifier training diverged: loss {row['loss']} at step "
                                     f"{done}; lower the learning rate")
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['batch_accuracy']:.3f}")
        bar.update(done - first)
    bar.close()
    return Trained(nnx.merge(graphdef, carry[0]), history)


def apply(model: Classifier, x: Float[Array, "s d"], batch: int = 8192) -> ClassifierOutput:
    """The model on many samples, in batches."""
    x = _checks.float_array("x", x, ndims=(2,))
    fn = nnx.jit(lambda m, xb: m(xb))
    parts = [fn(model, x[i:i + batch]) for i in range(0, x.shape[0], batch)]
    return ClassifierOutput(*(jnp.concatenate(p) for p in zip(*parts, strict=True)))


def accuracy(logits: Float[Array, "s c"], labels: Int[Array, " s"]) -> float:
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(labels)))
