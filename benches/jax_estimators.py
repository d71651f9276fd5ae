"""JAX side of the engine benchmark (benches/engine.rs runs it; JAX is never a dependency).

The same estimators as `cml`'s, on a complex-synapse instance written by `cml export` (a tanh
MLP, `L_in = MSE(support) + 1/2 sum lambda (phi - omega)^2`, `L_out = MSE(query)`,
`theta = (omega, rho)`, `lambda = exp(rho)`, the free phase starting at `phi = omega`). f64,
jit-compiled, one `lax.fori_loop` per loop.

    python3 benches/jax_estimators.py INSTANCE.json ESTIMATOR FREE SECOND STEP_SIZE BETA REPEATS

ESTIMATOR is one of
- `contrastive`: the symmetric contrastive meta-gradient. A free phase of FREE gradient steps
  from omega, nudged phases at +beta and -beta of SECOND steps each from the free solution;
  (g(beta) - g(-beta)) / (2 beta) with g(b) = d_theta L_b at the phase's end.
- `bptt`: `grad` of `theta -> L_out(phi_FREE(theta), theta)` through FREE gradient steps on
  `L_in` from `phi_0 = omega` (SECOND and BETA unused).
- `cg`: implicit differentiation at the end of a free phase of FREE steps:
  `d_theta L_out - d2_{theta phi} L_in v`, with SECOND conjugate-gradient iterations from 0 on
  `H v = d_phi L_out`, each product `H p` a jvp of `grad`, stopping at the first direction of
  non-positive curvature as `cml` does (BETA unused).

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
    path, estimator, free_steps, second, step_size, beta, repeats = sys.argv[1:8]
    free_steps, second, repeats = int(free_steps), int(second), int(repeats)
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

    def inner_loss(phi, theta):
        omega, rho = theta[:n_params], theta[n_params:]
        return jnp.mean((forward(phi, xs) - ys) ** 2) + 0.5 * jnp.sum(jnp.exp(rho) * (phi - omega) ** 2)

    def outer_loss(phi, theta):
        return jnp.mean((forward(phi, xq) - yq) ** 2)

    def phase_loss(phi, theta, b):
        return inner_loss(phi, theta) + b * outer_loss(phi, theta)

    grad_phi = jax.grad(phase_loss, argnums=0)
    grad_theta = jax.grad(phase_loss, argnums=1)

    def run(phi0, theta, b, steps):
        return jax.lax.fori_loop(0, steps, lambda _, phi: phi - step_size * grad_phi(phi, theta, b), phi0)

    def contrastive(theta):
        free = run(theta[:n_params], theta, 0.0, free_steps)
        g = [grad_theta(run(free, theta, b, second), theta, b) for b in (beta, -beta)]
        return (g[0] - g[1]) / (2.0 * beta)

    def bptt(theta):
        return jax.grad(lambda th: outer_loss(run(th[:n_params], th, 0.0, free_steps), th))(theta)

    def cg(theta):
        phi = run(theta[:n_params], theta, 0.0, free_steps)
        g_inner = lambda p: jax.grad(inner_loss, argnums=0)(p, theta)  # noqa: E731
        hvp = lambda p: jax.jvp(g_inner, (phi,), (p,))[1]  # noqa: E731
        b = jax.grad(outer_loss, argnums=0)(phi, theta)

        def iteration(_, state):
            # As cml's CG: stop (keep v) at the first direction of non-positive curvature, or
            # once the residual is exactly zero.
            v, r, p, rr, done = state
            hp = hvp(p)
            curvature = jnp.vdot(p, hp)
            done = done | (curvature <= 0.0) | (rr == 0.0)
            step = jnp.where(done, 0.0, rr / jnp.where(done, 1.0, curvature))
            v, r = v + step * p, r - step * hp
            rr_next = jnp.vdot(r, r)
            p = jnp.where(done, p, r + (rr_next / jnp.where(done, 1.0, rr)) * p)
            return v, r, p, jnp.where(done, rr, rr_next), done

        start = (jnp.zeros_like(b), b, b, jnp.vdot(b, b), jnp.array(False))
        v, *_ = jax.lax.fori_loop(0, second, iteration, start)
        mixed = jax.grad(lambda th: jnp.vdot(jax.grad(inner_loss, argnums=0)(phi, th), v))(theta)
        return jax.grad(outer_loss, argnums=1)(phi, theta) - mixed

    estimate = jax.jit({"contrastive": contrastive, "bptt": bptt, "cg": cg}[estimator])
    estimate(theta).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = estimate(theta).block_until_ready()
        best = min(best, time.perf_counter() - start)
    print(f"jax_seconds {best:.6f}")
    print("estimate " + " ".join(repr(float(v)) for v in out))


if __name__ == "__main__":
    main()
