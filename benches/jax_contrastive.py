"""JAX side of the engine benchmark (benches/engine.rs runs it; JAX is never a dependency).

The same estimator as `cml`'s: the symmetric contrastive meta-gradient of a complex-synapse
instance written by `cml export` (a tanh MLP, `L_in = MSE(support) + 1/2 sum lambda (phi -
omega)^2`, `L_out = MSE(query)`, `theta = (omega, rho)`, `lambda = exp(rho)`). One free phase of
FREE gradient steps from omega, then nudged phases at +beta and -beta of NUDGED steps each from
the free solution; the estimate is (g(beta) - g(-beta)) / (2 beta) with g(b) = d_theta L_b at the
phase's end. f64, jit-compiled, one `lax.fori_loop` per phase.

    python3 benches/jax_contrastive.py INSTANCE.json FREE NUDGED STEP_SIZE BETA REPEATS

Prints `jax_seconds S` (best of REPEATS, compile excluded) and `estimate v1 v2 ...` (every
entry, for the caller to compare with its own estimate). Exits 3 with a message when JAX is
not installed.
"""

import json
import sys
import time

try:
    import jax
except ImportError:
    print("SKIP: JAX is not installed (pip install jax); the JAX side of the comparison was not run")
    sys.exit(3)

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402


def main():
    path, free_steps, nudged_steps, step_size, beta, repeats = sys.argv[1:7]
    free_steps, nudged_steps, repeats = int(free_steps), int(nudged_steps), int(repeats)
    step_size, beta = float(step_size), float(beta)
    with open(path) as f:
        instance = json.load(f)
    if instance["problem"] != "synapse":
        sys.exit(f"expected a synapse instance, got {instance['problem']}")
    arrays = {a["name"]: jnp.asarray(a["values"], dtype=jnp.float64) for a in instance["arrays"]}
    sizes = [int(s) for s in arrays["sizes"]]
    shapes = list(zip(sizes[:-1], sizes[1:]))
    n_params = sum(fi * fo + fo for fi, fo in shapes)
    theta = arrays["theta"]
    omega, rho = theta[:n_params], theta[n_params:]
    xs, ys = arrays["x_support"][:, None], arrays["y_support"]
    xq, yq = arrays["x_query"][:, None], arrays["y_query"]

    def forward(phi, x):
        # Row-major (fan_in x fan_out) weights then biases, layer by layer, as cml lays them out.
        h, offset = x, 0
        for i, (fi, fo) in enumerate(shapes):
            w = phi[offset:offset + fi * fo].reshape(fi, fo)
            b = phi[offset + fi * fo:offset + fi * fo + fo]
            offset += fi * fo + fo
            h = h @ w + b
            if i + 1 < len(shapes):
                h = jnp.tanh(h)
        return h[:, 0]

    def phase_loss(phi, omega, rho, b):
        inner = jnp.mean((forward(phi, xs) - ys) ** 2) + 0.5 * jnp.sum(jnp.exp(rho) * (phi - omega) ** 2)
        return inner + b * jnp.mean((forward(phi, xq) - yq) ** 2)

    grad_phi = jax.grad(phase_loss, argnums=0)
    grad_theta = jax.grad(phase_loss, argnums=(1, 2))

    def run(phi0, b, steps):
        return jax.lax.fori_loop(0, steps, lambda _, phi: phi - step_size * grad_phi(phi, omega, rho, b), phi0)

    @jax.jit
    def estimate(omega, rho):
        free = run(omega, 0.0, free_steps)
        g = []
        for b in (beta, -beta):
            end = run(free, b, nudged_steps)
            d_omega, d_rho = grad_theta(end, omega, rho, b)
            g.append(jnp.concatenate([d_omega, d_rho]))
        return (g[0] - g[1]) / (2.0 * beta)

    estimate(omega, rho).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = estimate(omega, rho).block_until_ready()
        best = min(best, time.perf_counter() - start)
    print(f"jax_seconds {best:.6f}")
    print("estimate " + " ".join(repr(float(v)) for v in out))


if __name__ == "__main__":
    main()
