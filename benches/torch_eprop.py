"""PyTorch side of the e-prop benchmark (benches/engine.rs runs it; PyTorch is never a dependency).

One inner phase of the spiking job, written from docs/SPIKING.md's equations in the way a PyTorch
implementation of e-prop runs it (as the paper's authors' code does): the samples are a batch,
and every time step updates the membranes, spikes, pseudo-derivatives and the eligibility traces
of every synapse with dense tensor operations, on the CPU, in float64.

Network: LIF neurons `v_t = alpha v_{t-1} + W_rec z_{t-1} + W_in x_t - thr z_{t-1}` (reset by
subtraction when RESET), `z = H(u)`, `u = (v - thr) / thr`, pseudo-derivative `gamma max(0, 1 - |u|)`,
readout `y_t = kappa y_{t-1} + W_out . z_t`, prediction the time average of `y`. Inner loss: the
support MSE of the predictions, the rate regulariser `r (mean z - r0)^2` and the pull
`lambda/2 ||phi - omega||^2`. e-prop: traces `eps_in_t = alpha eps_in_{t-1} + x_t`,
`eps_rec_t = alpha eps_rec_{t-1} + z_{t-1}`, learning signal `L_t = W_out g c_t + rho` with
`c_t = (1/T) sum_{s>=t} kappa^(s-t)`, `dW = sum_t (L_t psi_t) eps_t^T`, `dW_out = sum_t g c_t z_t`.

    python3 benches/torch_eprop.py PHASE.json REPEATS

PHASE.json (written by the bench) holds the network constants, the support spikes and targets,
omega, the step size and the number of gradient-descent steps. Prints `torch_seconds S` (best of
REPEATS) and `phi v1 v2 ...` (the phase's end point). Exits 3 with a message when PyTorch is not
installed.
"""

import json
import sys
import time

try:
    import torch
except ImportError:
    print("SKIP: PyTorch is not installed (pip install torch); the PyTorch side of the comparison was not run")
    sys.exit(3)


def main():
    path, repeats = sys.argv[1], int(sys.argv[2])
    with open(path) as f:
        c = json.load(f)
    torch.set_num_threads(1)
    dt = torch.float64
    n_in, n, steps = c["inputs"], c["neurons"], c["steps"]
    alpha, kappa, thr, gamma = c["alpha"], c["kappa"], c["threshold"], c["gamma"]
    reset = thr if c["reset"] else 0.0
    rate_strength, rate_target, strength = c["rate_strength"], c["rate_target"], c["strength"]
    lr, gd_steps = c["step_size"], c["gd_steps"]
    targets = torch.tensor(c["targets"], dtype=dt)
    samples = targets.shape[0]
    # (steps, samples, inputs): one batch of input spikes per time step.
    x = torch.tensor(c["raster"], dtype=dt).reshape(samples, steps, n_in).permute(1, 0, 2).contiguous()
    omega = torch.tensor(c["omega"], dtype=dt)
    readout = torch.tensor([sum(kappa ** (s - t) for s in range(t, steps)) / steps for t in range(steps)], dtype=dt)

    def split(phi):
        w_in = phi[: n * n_in].reshape(n, n_in)
        w_rec = phi[n * n_in : n * n_in + n * n].reshape(n, n)
        return w_in, w_rec, phi[n * n_in + n * n :]

    def gradient(phi):
        w_in, w_rec, w_out = split(phi)
        v = torch.zeros(samples, n, dtype=dt)
        z = torch.zeros(samples, n, dtype=dt)
        eps_in = torch.zeros(samples, n_in, dtype=dt)
        eps_rec = torch.zeros(samples, n, dtype=dt)
        y = torch.zeros(samples, dtype=dt)
        y_sum = torch.zeros(samples, dtype=dt)
        zs, psis, traces_in, traces_rec = [], [], [], []
        for t in range(steps):
            if t == 0:
                v = x[t] @ w_in.T
            else:
                v = alpha * v + z @ w_rec.T + x[t] @ w_in.T - reset * z
                eps_rec = alpha * eps_rec + z
            eps_in = alpha * eps_in + x[t]
            u = (v - thr) / thr
            z = (u > 0.0).to(dt)
            psi = gamma * torch.clamp(1.0 - u.abs(), min=0.0)
            y = kappa * y + z @ w_out
            y_sum = y_sum + y
            zs.append(z)
            psis.append(psi)
            traces_in.append(eps_in)
            traces_rec.append(eps_rec)
        prediction = y_sum / steps
        g = 2.0 * (prediction - targets) / samples
        rate = torch.stack(zs).mean()
        rho = 2.0 * rate_strength * (rate - rate_target) / (samples * steps * n)
        g_in = torch.zeros(n, n_in, dtype=dt)
        g_rec = torch.zeros(n, n, dtype=dt)
        g_out = torch.zeros(n, dtype=dt)
        for t in range(steps):
            signal = (w_out[None, :] * (g[:, None] * readout[t]) + rho) * psis[t]
            g_in += signal.T @ traces_in[t]
            g_rec += signal.T @ traces_rec[t]
            g_out += (g * readout[t]) @ zs[t]
        grad = torch.cat([g_in.reshape(-1), g_rec.reshape(-1), g_out])
        return grad + strength * (phi - omega)

    def phase():
        phi = omega.clone()
        for _ in range(gd_steps):
            phi = phi - lr * gradient(phi)
        return phi

    with torch.no_grad():
        phase()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            out = phase()
            best = min(best, time.perf_counter() - start)
    print(f"torch_seconds {best:.6f}")
    print("phi " + " ".join(repr(float(v)) for v in out))


if __name__ == "__main__":
    main()
