//! The recurrent spiking network of the paper's §5.4 (docs/SPIKING.md §1-2): population-coded
//! input spikes, leaky integrate-and-fire neurons with reset by subtraction, a leaky readout
//! whose time average is the prediction; and its two derivative paths:
//!
//! - [`SpikingKernel`]: the fast path, e-prop (eligibility traces run forward in time, the
//!   learning signal fed back through the readout weights), on preallocated buffers;
//! - [`SpikingNet::predict`]: the same network in Candle ops with the pseudo-derivative as the
//!   spike's derivative, so autodiff gives surrogate BPTT, or, with the recurrent spikes cut from
//!   the graph, exactly e-prop (docs/SPIKING.md §3).

use crate::engine::matmul::{Product, View, ViewMut};
use crate::error::{CmlError, Result};
use crate::linalg::Vector;
use crate::rng::{Rng, normal};
use candle_core::{DType, Device, Tensor};
use rand::Rng as _;

/// What a neuron emits when its membrane potential `v` crosses the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spike {
    /// `z = H(v - thr)`, with the pseudo-derivative `gamma max(0, 1 - |v - thr| / thr)` standing
    /// in for its derivative (the network of the paper).
    Heaviside,
    /// `z = S((v - thr) / thr)`, the smooth step whose derivative is the pseudo-derivative's
    /// shape `max(0, 1 - |u|) / thr`: a differentiable relaxation, used to check the contrastive
    /// estimate against finite differences of a meta-objective that has a derivative.
    Soft,
}

/// Which derivative the Candle path's graph carries (docs/SPIKING.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Surrogate {
    /// Recurrent spikes enter the next step as constants: autodiff then equals e-prop.
    Eprop,
    /// Surrogate BPTT: the recurrent spikes keep their pseudo-derivative.
    Bptt,
}

/// The network and its inner-loss settings (defaults: the paper's, docs/SPIKING.md §1).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Input neurons of the population code.
    pub inputs: usize,
    /// Recurrent LIF neurons.
    pub neurons: usize,
    /// Simulation steps per input.
    pub steps: usize,
    /// Variance of the input neurons' Gaussian tuning curves, on inputs rescaled to [0, 1].
    pub tuning_variance: f64,
    pub tau_membrane: f64,
    pub tau_readout: f64,
    pub threshold: f64,
    /// Scale of the pseudo-derivative.
    pub gamma: f64,
    /// Whether the recurrent weights exist (false: a layer of independent LIF neurons).
    pub recurrent: bool,
    /// Reset by subtraction of the threshold after a spike (false: no reset, so that with
    /// `Spike::Soft` and no recurrence e-prop is the exact gradient; docs/SPIKING.md §3).
    pub reset: bool,
    pub spike: Spike,
    /// Firing-rate regulariser `rate_strength (mean z - rate_target)^2`, mean over the support
    /// set's samples, steps and neurons.
    pub rate_strength: f64,
    pub rate_target: f64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            inputs: 100,
            neurons: 100,
            steps: 20,
            tuning_variance: 2e-4,
            tau_membrane: 30.0,
            tau_readout: 30.0,
            threshold: 0.1,
            gamma: 0.3,
            recurrent: true,
            reset: true,
            spike: Spike::Heaviside,
            rate_strength: 1e-5,
            rate_target: 0.2,
        }
    }
}

/// Where each weight matrix sits in the flat fast-parameter vector `phi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `W_in`, `neurons x inputs`, row-major.
    pub input: (usize, usize),
    /// `W_rec`, `neurons x neurons`, row-major (empty without recurrence).
    pub recurrent: (usize, usize),
    /// `W_out`, one weight per neuron.
    pub output: (usize, usize),
}

impl NetworkSpec {
    pub fn validate(&self) -> Result<()> {
        let counts = [
            ("inputs", self.inputs),
            ("neurons", self.neurons),
            ("steps", self.steps),
        ];
        for (name, n) in counts {
            if n == 0 {
                return Err(CmlError::invalid(name, n, "at least 1"));
            }
        }
        let positive = [
            ("tuning_variance", self.tuning_variance),
            ("tau_membrane", self.tau_membrane),
            ("tau_readout", self.tau_readout),
            ("threshold", self.threshold),
            ("gamma", self.gamma),
        ];
        for (name, x) in positive {
            if !(x.is_finite() && x > 0.0) {
                return Err(CmlError::invalid(name, x, "a finite number above 0"));
            }
        }
        for (name, x) in [
            ("rate_strength", self.rate_strength),
            ("rate_target", self.rate_target),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(CmlError::invalid(name, x, "a finite number, at least 0"));
            }
        }
        Ok(())
    }

    /// Membrane decay per step, `exp(-1 / tau_membrane)`.
    pub fn alpha(&self) -> f64 {
        (-1.0 / self.tau_membrane).exp()
    }

    /// Readout decay per step, `exp(-1 / tau_readout)`.
    pub fn kappa(&self) -> f64 {
        (-1.0 / self.tau_readout).exp()
    }

    pub fn layout(&self) -> Layout {
        let n_in = self.neurons * self.inputs;
        let n_rec = if self.recurrent {
            self.neurons * self.neurons
        } else {
            0
        };
        Layout {
            input: (0, n_in),
            recurrent: (n_in, n_in + n_rec),
            output: (n_in + n_rec, n_in + n_rec + self.neurons),
        }
    }

    pub fn param_count(&self) -> usize {
        self.layout().output.1
    }

    /// Kaiming-normal weights (`N(0, 2 / fan_in)`), scaled by 0.1, 0.01 and 0.1 for the input,
    /// recurrent and output weights, as the paper's code initialises them.
    pub fn initial_weights(&self, rng: &mut Rng) -> Vector {
        let layout = self.layout();
        let mut w = Vector::zeros(self.param_count());
        let blocks = [
            (layout.input, self.inputs, 0.1),
            (layout.recurrent, self.neurons, 0.01),
            (layout.output, self.neurons, 0.1),
        ];
        for ((start, end), fan_in, gain) in blocks {
            let std = gain * (2.0 / fan_in as f64).sqrt();
            for k in start..end {
                w[k] = std * normal(rng);
            }
        }
        w
    }

    /// The spike and its (pseudo-)derivative at membrane potential `v`.
    pub fn spike(&self, v: f64) -> (f64, f64) {
        let u = (v - self.threshold) / self.threshold;
        let hat = (1.0 - u.abs()).max(0.0);
        match self.spike {
            Spike::Heaviside => (if u > 0.0 { 1.0 } else { 0.0 }, self.gamma * hat),
            Spike::Soft => (smooth_step(u), hat / self.threshold),
        }
    }

    /// Firing probability per step of each input neuron for input `x`, rescaled from `range` to
    /// [0, 1]: Gaussian tuning curves with centres evenly spaced over [0, 1].
    pub fn input_rates(&self, x: f64, range: (f64, f64)) -> Vec<f64> {
        let s = (x - range.0) / (range.1 - range.0);
        let spacing = if self.inputs > 1 {
            1.0 / (self.inputs - 1) as f64
        } else {
            0.0
        };
        (0..self.inputs)
            .map(|i| {
                let d = s - i as f64 * spacing;
                (-d * d / (2.0 * self.tuning_variance)).exp()
            })
            .collect()
    }

    /// Bernoulli input spikes for each of `xs`: `(xs.len(), steps, inputs)` row-major, 0 or 1.
    pub fn encode(&self, rng: &mut Rng, xs: &[f64], range: (f64, f64)) -> Vec<f64> {
        let mut raster = Vec::with_capacity(xs.len() * self.steps * self.inputs);
        for &x in xs {
            let rates = self.input_rates(x, range);
            for _ in 0..self.steps {
                raster.extend(
                    rates
                        .iter()
                        .map(|&p| f64::from(u8::from(rng.random::<f64>() < p))),
                );
            }
        }
        raster
    }

    /// `c_t = (1/T) sum_{s=t}^{T} kappa^{s-t}` for `t = 1..T`: how much a spike at step `t`
    /// moves the time-averaged readout per unit output weight (docs/SPIKING.md §2).
    pub fn readout_weights(&self) -> Vec<f64> {
        let (t_max, kappa) = (self.steps, self.kappa());
        let mut c = vec![0.0; t_max];
        let mut acc = 0.0;
        for t in (0..t_max).rev() {
            acc = 1.0 + kappa * acc;
            c[t] = acc / t_max as f64;
        }
        c
    }
}

/// `S(u) = 0` below -1, `1` above 1, `1/2 + u - u|u|/2` between: `S' = max(0, 1 - |u|)`.
fn smooth_step(u: f64) -> f64 {
    let c = u.clamp(-1.0, 1.0);
    0.5 + c - c * c.abs() / 2.0
}

/// The same step from ops Candle can differentiate twice: `(r(u+1)^2 - 2 r(u)^2 + r(u-1)^2) / 2`
/// with `r = relu` (equal to [`smooth_step`] for every `u`).
fn smooth_step_tensor(u: &Tensor) -> candle_core::Result<Tensor> {
    let r2 = |shift: f64| (u + shift)?.relu()?.sqr();
    ((r2(1.0)? - (r2(0.0)? * 2.0)?)? + r2(-1.0)?)? * 0.5
}

/// A set of samples as Candle inputs: one `(samples, inputs)` spike matrix per step.
#[derive(Debug, Clone)]
pub struct SpikeInputs {
    pub samples: usize,
    pub per_step: Vec<Tensor>,
}

impl SpikeInputs {
    pub fn new(spec: &NetworkSpec, raster: &[f64]) -> Result<Self> {
        let per_sample = spec.steps * spec.inputs;
        if raster.is_empty() || !raster.len().is_multiple_of(per_sample) {
            return Err(CmlError::invalid(
                "spike raster length",
                raster.len(),
                format!("a positive multiple of steps x inputs = {per_sample}"),
            ));
        }
        let samples = raster.len() / per_sample;
        let all = Tensor::from_slice(raster, (samples, spec.steps, spec.inputs), &Device::Cpu)?;
        let per_step = (0..spec.steps)
            .map(|t| all.narrow(1, t, 1)?.squeeze(1)?.contiguous())
            .collect::<candle_core::Result<_>>()?;
        Ok(SpikeInputs { samples, per_step })
    }
}

/// The network's output in Candle ops.
pub struct Prediction {
    /// `(samples, 1)`: the time-averaged readout.
    pub output: Tensor,
    /// Scalar: the mean spike count per sample, step and neuron.
    pub rate: Tensor,
}

/// The network as a differentiable function of the flat weights.
#[derive(Debug, Clone)]
pub struct SpikingNet {
    pub spec: NetworkSpec,
}

impl SpikingNet {
    /// Runs the network on `inputs` with weights `phi`. The spike's value is the forward
    /// network's; its derivative is the pseudo-derivative (Heaviside) or the smooth step's (Soft).
    pub fn predict(
        &self,
        phi: &Tensor,
        inputs: &SpikeInputs,
        surrogate: Surrogate,
    ) -> candle_core::Result<Prediction> {
        let s = &self.spec;
        let layout = s.layout();
        let block =
            |(a, b): (usize, usize), rows: usize| phi.narrow(0, a, b - a)?.reshape((rows, (b - a) / rows));
        let w_in_t = block(layout.input, s.neurons)?.t()?;
        let w_rec_t = if s.recurrent {
            Some(block(layout.recurrent, s.neurons)?.t()?)
        } else {
            None
        };
        let w_out = block(layout.output, s.neurons)?;
        let (alpha, kappa, thr) = (s.alpha(), s.kappa(), s.threshold);
        let zeros = Tensor::zeros((inputs.samples, s.neurons), DType::F64, &Device::Cpu)?;
        let (mut v, mut z) = (zeros.clone(), zeros);
        let mut y = Tensor::zeros((inputs.samples, 1), DType::F64, &Device::Cpu)?;
        let mut y_sum = y.clone();
        let mut z_sum = Tensor::zeros((), DType::F64, &Device::Cpu)?;
        for x in &inputs.per_step {
            // Reset by subtraction enters as a constant, in both derivative paths (as in e-prop).
            let mut next = ((&v * alpha)? + x.matmul(&w_in_t)?)?;
            if s.reset {
                next = (next - (z.detach() * thr)?)?;
            }
            if let Some(w) = &w_rec_t {
                let pre = match surrogate {
                    Surrogate::Eprop => z.detach(),
                    Surrogate::Bptt => z.clone(),
                };
                next = (next + pre.matmul(w)?)?;
            }
            v = next;
            let u = ((&v - thr)? / thr)?;
            z = match s.spike {
                Spike::Heaviside => {
                    // Value H(u), derivative gamma max(0, 1 - |u|) through v.
                    let h = u.gt(0.0)?.to_dtype(DType::F64)?;
                    let g = (smooth_step_tensor(&u)? * (s.gamma * thr))?;
                    (h + (&g - g.detach())?)?
                }
                Spike::Soft => smooth_step_tensor(&u)?,
            };
            y = ((&y * kappa)? + z.matmul(&w_out)?)?;
            y_sum = (y_sum + &y)?;
            z_sum = (z_sum + z.sum_all()?)?;
        }
        let steps = inputs.per_step.len() as f64;
        Ok(Prediction {
            output: (y_sum / steps)?,
            rate: (z_sum / (steps * (inputs.samples * s.neurons) as f64))?,
        })
    }
}

/// One set of samples for the fast path: spikes, targets and the weight of each sample's
/// squared error in the loss.
#[derive(Debug, Clone)]
pub struct Samples {
    /// `(samples, steps, inputs)` row-major.
    pub raster: Vec<f64>,
    pub targets: Vec<f64>,
}

/// How e-prop sums its weight gradients (docs/SPIKING.md §2). Both give the same sums in a
/// different order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Accumulation {
    /// Per spike: a backward filter of the learning signal, added to a weight column at each
    /// input or recurrent spike. Costs `samples x steps x neurons` plus `neurons` per spike.
    #[default]
    EventDriven,
    /// Eligibility traces run forward at every step, then dense products with the learning
    /// signal (`samples x steps x neurons x neurons` for the recurrent weights): the reference.
    Dense,
}

/// The fast path (docs/SPIKING.md §2): simulation and e-prop on buffers sized once for the
/// support set followed by the query set.
#[derive(Debug)]
pub struct SpikingKernel {
    spec: NetworkSpec,
    support: usize,
    query: usize,
    /// Support rows then query rows, `(samples, steps, inputs)`.
    raster: Vec<f64>,
    targets: Vec<f64>,
    readout: Vec<f64>,
    /// The recurrent weights' gradient product `A^T E`, planned for the support rows and for
    /// all rows.
    rec_products: [Product; 2],
    accumulation: Accumulation,
}

/// The fast path's buffers (one per phase worker).
#[derive(Debug)]
pub struct Buffers {
    w_in_t: Vec<f64>,
    w_rec_t: Vec<f64>,
    v: Vec<f64>,
    z: Vec<f64>,
    /// Pseudo-derivatives, then overwritten by the learning signal times them.
    psi: Vec<f64>,
    predictions: Vec<f64>,
    /// The dense path's eligibility traces; the event-driven path's backward filter of the
    /// learning signal sits in `trace_rec` (one sample's steps at a time).
    trace_in: Vec<f64>,
    trace_rec: Vec<f64>,
}

impl Buffers {
    /// The last run's predictions (support samples, then query samples if it ran them).
    pub fn predictions(&self) -> &[f64] {
        &self.predictions
    }

    /// The last run's spikes, `(samples, steps, neurons)` row-major.
    pub fn spikes(&self) -> &[f64] {
        &self.z
    }
}

/// Squared errors, the rate regulariser and what the gradient needs of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    pub support_mse: f64,
    pub query_mse: f64,
    pub rate: f64,
    /// The firing-rate regulariser's value.
    pub rate_penalty: f64,
}

impl SpikingKernel {
    pub fn new(spec: &NetworkSpec, support: Samples, query: Samples) -> Result<Self> {
        spec.validate()?;
        let per_sample = spec.steps * spec.inputs;
        for (name, s) in [("support", &support), ("query", &query)] {
            if s.targets.is_empty() || s.raster.len() != s.targets.len() * per_sample {
                return Err(CmlError::invalid(
                    format!("{name} samples"),
                    format!(
                        "{} targets and {} raster entries",
                        s.targets.len(),
                        s.raster.len()
                    ),
                    format!(
                        "at least one target and steps x inputs = {per_sample} raster entries per target"
                    ),
                ));
            }
        }
        let (ns, nq) = (support.targets.len(), query.targets.len());
        let mut raster = support.raster;
        raster.extend(query.raster);
        let mut targets = support.targets;
        targets.extend(query.targets);
        let (n, t) = (spec.neurons, spec.steps);
        let plan = |rows: usize| Product::new(n, rows * t, n, false);
        Ok(SpikingKernel {
            rec_products: [plan(ns), plan(ns + nq)],
            readout: spec.readout_weights(),
            spec: spec.clone(),
            support: ns,
            query: nq,
            raster,
            targets,
            accumulation: Accumulation::default(),
        })
    }

    /// The same kernel summing its gradients as `accumulation` says.
    pub fn with_accumulation(mut self, accumulation: Accumulation) -> Self {
        self.accumulation = accumulation;
        self
    }

    pub fn buffers(&self) -> Buffers {
        let s = &self.spec;
        let rows = (self.support + self.query) * s.steps;
        Buffers {
            w_in_t: vec![0.0; s.inputs * s.neurons],
            w_rec_t: vec![0.0; s.neurons * s.neurons],
            v: vec![0.0; rows * s.neurons],
            z: vec![0.0; rows * s.neurons],
            psi: vec![0.0; rows * s.neurons],
            predictions: vec![0.0; self.support + self.query],
            trace_in: match self.accumulation {
                Accumulation::Dense => vec![0.0; rows * s.inputs],
                Accumulation::EventDriven => Vec::new(),
            },
            trace_rec: match self.accumulation {
                Accumulation::Dense => vec![0.0; rows * s.neurons],
                Accumulation::EventDriven => vec![0.0; s.steps * s.neurons],
            },
        }
    }

    /// Simulates the first `samples` samples with weights `w`, filling `v`, `z`, `psi` and the
    /// predictions.
    fn simulate(&self, b: &mut Buffers, w: &[f64], samples: usize) {
        let s = &self.spec;
        let (n, n_in, steps) = (s.neurons, s.inputs, s.steps);
        let layout = s.layout();
        transpose(&w[layout.input.0..layout.input.1], n, n_in, &mut b.w_in_t);
        if s.recurrent {
            transpose(&w[layout.recurrent.0..layout.recurrent.1], n, n, &mut b.w_rec_t);
        }
        let w_out = &w[layout.output.0..layout.output.1];
        let (alpha, kappa) = (s.alpha(), s.kappa());
        let reset = if s.reset { s.threshold } else { 0.0 };
        for sample in 0..samples {
            let (mut y, mut y_sum) = (0.0, 0.0);
            for t in 0..steps {
                let row = sample * steps + t;
                let (before, now) = b.v.split_at_mut(row * n);
                let v = &mut now[..n];
                if t == 0 {
                    v.fill(0.0);
                } else {
                    let (v_prev, z_prev) = (&before[(row - 1) * n..], &b.z[(row - 1) * n..row * n]);
                    for j in 0..n {
                        v[j] = alpha * v_prev[j] - reset * z_prev[j];
                    }
                    if s.recurrent {
                        add_rows(v, &b.w_rec_t, z_prev);
                    }
                }
                add_rows(v, &b.w_in_t, &self.raster[row * n_in..(row + 1) * n_in]);
                let (z, psi) = (
                    &mut b.z[row * n..(row + 1) * n],
                    &mut b.psi[row * n..(row + 1) * n],
                );
                let mut readout = 0.0;
                for j in 0..n {
                    (z[j], psi[j]) = s.spike(v[j]);
                    readout += w_out[j] * z[j];
                }
                y = kappa * y + readout;
                y_sum += y;
            }
            b.predictions[sample] = y_sum / steps as f64;
        }
    }

    /// The losses of the network `w` (support and, when `with_query`, query), and with
    /// `grad = Some`, their e-prop gradient `d_w [support MSE + rate penalty + beta query MSE]`
    /// written into it. No heap allocation.
    pub fn run(&self, b: &mut Buffers, w: &[f64], beta: f64, grad: Option<&mut [f64]>) -> Losses {
        let s = &self.spec;
        let with_query = beta != 0.0;
        let samples = self.support + if with_query { self.query } else { 0 };
        self.simulate(b, w, samples);
        let (n, steps) = (s.neurons, s.steps);
        let mse = |range: std::ops::Range<usize>| {
            let len = range.len() as f64;
            range
                .map(|k| (b.predictions[k] - self.targets[k]).powi(2))
                .sum::<f64>()
                / len
        };
        let support_rows = self.support * steps * n;
        let rate = b.z[..support_rows].iter().sum::<f64>() / support_rows as f64;
        let losses = Losses {
            support_mse: mse(0..self.support),
            query_mse: if with_query {
                mse(self.support..samples)
            } else {
                f64::NAN
            },
            rate,
            rate_penalty: s.rate_strength * (rate - s.rate_target).powi(2),
        };
        if let Some(grad) = grad {
            self.eprop(b, w, beta, samples, &losses, grad);
        }
        losses
    }

    /// e-prop (docs/SPIKING.md §2): `d_W = sum_t L_t psi_t eps_t` with eligibility vectors
    /// `eps_t = alpha eps_{t-1} + pre_t` and the learning signal `L_t = W_out g c_t` (plus the
    /// rate regulariser's) fed back through the readout weights; summed per spike or densely,
    /// as the kernel's [`Accumulation`] says.
    fn eprop(
        &self,
        b: &mut Buffers,
        w: &[f64],
        beta: f64,
        samples: usize,
        losses: &Losses,
        grad: &mut [f64],
    ) {
        let s = &self.spec;
        let (n, steps) = (s.neurons, s.steps);
        let layout = s.layout();
        let w_out = &w[layout.output.0..layout.output.1];
        let support_rows = self.support * steps * n;
        let rate_signal = 2.0 * s.rate_strength * (losses.rate - s.rate_target) / support_rows as f64;
        let (g_in, rest) = grad.split_at_mut(layout.recurrent.0);
        let (g_rec, g_out) = rest.split_at_mut(layout.output.0 - layout.recurrent.0);
        g_out.fill(0.0);
        // The output weights' gradient, and `psi` overwritten by `L_t psi_t`.
        for sample in 0..samples {
            // d loss / d prediction of this sample.
            let (weight, len) = if sample < self.support {
                (1.0, self.support)
            } else {
                (beta, self.query)
            };
            let g = weight * 2.0 * (b.predictions[sample] - self.targets[sample]) / len as f64;
            let rate = if sample < self.support { rate_signal } else { 0.0 };
            for t in 0..steps {
                let row = sample * steps + t;
                let c = self.readout[t];
                let (z, psi) = (&b.z[row * n..(row + 1) * n], &mut b.psi[row * n..(row + 1) * n]);
                for j in 0..n {
                    g_out[j] += g * c * z[j];
                    psi[j] *= w_out[j] * g * c + rate;
                }
            }
        }
        match self.accumulation {
            Accumulation::Dense => self.accumulate_dense(b, samples, g_in, g_rec),
            Accumulation::EventDriven => self.accumulate_events(b, samples, g_in, g_rec),
        }
    }

    /// `dW_ji = sum_t L_{t,j} psi_{t,j} eps_{t,i}` with the traces run forward at every step.
    fn accumulate_dense(&self, b: &mut Buffers, samples: usize, g_in: &mut [f64], g_rec: &mut [f64]) {
        let s = &self.spec;
        let (n, n_in, steps) = (s.neurons, s.inputs, s.steps);
        let alpha = s.alpha();
        for sample in 0..samples {
            for t in 0..steps {
                let row = sample * steps + t;
                // Eligibility vectors of the input and recurrent synapses.
                let (done, now) = b.trace_in.split_at_mut(row * n_in);
                let trace = &mut now[..n_in];
                let x = &self.raster[row * n_in..(row + 1) * n_in];
                for i in 0..n_in {
                    trace[i] = x[i]
                        + if t == 0 {
                            0.0
                        } else {
                            alpha * done[(row - 1) * n_in + i]
                        };
                }
                if s.recurrent {
                    let (done, now) = b.trace_rec.split_at_mut(row * n);
                    let trace = &mut now[..n];
                    for i in 0..n {
                        trace[i] = if t == 0 {
                            0.0
                        } else {
                            alpha * done[(row - 1) * n + i] + b.z[(row - 1) * n + i]
                        };
                    }
                }
            }
        }
        let k = usize::from(samples > self.support);
        let rows = samples * steps;
        // W_in: an input trace is zero until its neuron first spikes in the sample, so skip
        // those entries; accumulate into W_in^T's buffer (free after the run).
        let acc = &mut b.w_in_t;
        acc.fill(0.0);
        for row in 0..rows {
            let signal = &b.psi[row * n..(row + 1) * n];
            for (i, &e) in b.trace_in[row * n_in..(row + 1) * n_in].iter().enumerate() {
                if e != 0.0 {
                    for (a, l) in acc[i * n..(i + 1) * n].iter_mut().zip(signal) {
                        *a += e * l;
                    }
                }
            }
        }
        transpose(acc, n_in, n, g_in);
        if s.recurrent {
            let signal = View::row_major(&b.psi[..rows * n], rows, n).t();
            self.rec_products[k].run(
                signal,
                View::row_major(&b.trace_rec[..rows * n], rows, n),
                ViewMut::row_major(g_rec, n, n),
            );
        }
    }

    /// The same sums in the other order. Swapping the sums over `t` and over the spikes inside
    /// the traces, `dW^in_ji = sum_s x_{s,i} G_{s,j}` and `dW^rec_ji = sum_s z_{s,i} G_{s+1,j}`
    /// with the learning signal filtered backward in time, `G_t = L_t psi_t + alpha G_{t+1}`
    /// (`G_T = 0` past the last step): each input or recurrent spike adds one column.
    fn accumulate_events(&self, b: &mut Buffers, samples: usize, g_in: &mut [f64], g_rec: &mut [f64]) {
        let s = &self.spec;
        let (n, n_in, steps) = (s.neurons, s.inputs, s.steps);
        let alpha = s.alpha();
        // W_in^T and W_rec^T accumulate in the transposes' buffers (free after the run), so that
        // a spike of presynaptic neuron i adds to one contiguous row.
        b.w_in_t.fill(0.0);
        b.w_rec_t.fill(0.0);
        let filter = &mut b.trace_rec[..steps * n];
        for sample in 0..samples {
            let first = sample * steps;
            for t in (0..steps).rev() {
                let signal = &b.psi[(first + t) * n..(first + t + 1) * n];
                let (now, later) = filter[t * n..].split_at_mut(n);
                if t + 1 == steps {
                    now.copy_from_slice(signal);
                } else {
                    for ((f, l), f_next) in now.iter_mut().zip(signal).zip(&later[..n]) {
                        *f = l + alpha * f_next;
                    }
                }
            }
            for t in 0..steps {
                let row = first + t;
                let x = &self.raster[row * n_in..(row + 1) * n_in];
                add_events(&mut b.w_in_t, &filter[t * n..(t + 1) * n], x);
                if s.recurrent && t + 1 < steps {
                    let z = &b.z[row * n..(row + 1) * n];
                    add_events(&mut b.w_rec_t, &filter[(t + 1) * n..(t + 2) * n], z);
                }
            }
        }
        transpose(&b.w_in_t, n_in, n, g_in);
        if s.recurrent {
            transpose(&b.w_rec_t, n, n, g_rec);
        }
    }
}

/// `acc[i, :] += x_i column` for every nonzero `x_i` (one spike each).
fn add_events(acc: &mut [f64], column: &[f64], x: &[f64]) {
    let n = column.len();
    for (i, &xi) in x.iter().enumerate() {
        if xi != 0.0 {
            for (a, c) in acc[i * n..(i + 1) * n].iter_mut().zip(column) {
                *a += xi * c;
            }
        }
    }
}

/// `dst` (cols x rows) = `src` (rows x cols) transposed.
fn transpose(src: &[f64], rows: usize, cols: usize, dst: &mut [f64]) {
    for r in 0..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// `v += sum_i x_i m[i, :]` over the nonzero `x_i` (spikes are sparse).
fn add_rows(v: &mut [f64], m: &[f64], x: &[f64]) {
    let n = v.len();
    for (i, &xi) in x.iter().enumerate() {
        if xi != 0.0 {
            for (vj, mj) in v.iter_mut().zip(&m[i * n..(i + 1) * n]) {
                *vj += xi * mj;
            }
        }
    }
}
