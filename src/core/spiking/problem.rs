//! Few-shot sinusoid regression with the spiking network (docs/SPIKING.md §4): the complex
//! synapse of the paper's §5.4, whose fast weights `phi = (W_in, W_rec, W_out)` learn a task by
//! e-prop under a pull toward the meta-parameters `theta = omega`:
//!
//! ```text
//! L_in  = support MSE + rate_strength (mean z - rate_target)^2 + strength/2 ||phi - omega||^2
//! L_out = query MSE
//! ```

use super::network::{
    Accumulation, Buffers, Losses, NetworkSpec, Samples, Spike, SpikeInputs, SpikingKernel, SpikingNet,
    Surrogate,
};
use crate::engine::{FirstOrderPhase, Workspace, downcast};
use crate::error::{CmlError, Result};
use crate::linalg::{Vector, to_dvector, to_tensor};
use crate::problem::instance::InstanceReader;
use crate::problem::{BilevelProblem, Dims, InstanceFile, ProblemInstance, SinusoidTask, ToInstanceFile};
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use nalgebra::DMatrix;

/// `lambda` of the pull `lambda/2 ||phi - omega||^2` in the paper's code (`1e-3 sum`, so 2e-3).
pub const PULL_STRENGTH: f64 = 2e-3;

/// Inputs of the sinusoid tasks, rescaled from this range to [0, 1] before coding.
pub const INPUT_RANGE: (f64, f64) = (-5.0, 5.0);

/// A sinusoid task with its inputs coded as spike trains (drawn once, so the losses are
/// deterministic functions of the weights).
#[derive(Debug, Clone)]
pub struct SpikingTask {
    pub task: SinusoidTask,
    pub support: Samples,
    pub query: Samples,
}

impl SpikingTask {
    /// Draws a sinusoid task with `shots` support and query points, then its input spikes.
    pub fn sample(rng: &mut Rng, shots: usize, spec: &NetworkSpec) -> Result<Self> {
        let task = SinusoidTask::sample(rng, shots)?;
        let support = Samples {
            raster: spec.encode(rng, task.x_support.as_slice(), INPUT_RANGE),
            targets: task.y_support.as_slice().to_vec(),
        };
        let query = Samples {
            raster: spec.encode(rng, task.x_query.as_slice(), INPUT_RANGE),
            targets: task.y_query.as_slice().to_vec(),
        };
        Ok(SpikingTask { task, support, query })
    }
}

/// The complex synapse on the spiking network, for one task.
#[derive(Debug)]
pub struct SpikingSynapse {
    pub net: SpikingNet,
    /// `lambda` of the pull `lambda/2 ||phi - omega||^2` (the paper's code: `1e-3 sum`, so 2e-3).
    pub strength: f64,
    /// What the Candle losses' graphs differentiate to; the fast path is e-prop, so it is
    /// offered only with [`Surrogate::Eprop`], where the two agree.
    pub surrogate: Surrogate,
    kernel: SpikingKernel,
    /// The support and query samples the problem was built from (what its instance file holds).
    samples: [Samples; 2],
    support: SpikeInputs,
    query: SpikeInputs,
    y_support: Tensor,
    y_query: Tensor,
    omega: Tensor,
}

impl SpikingSynapse {
    pub fn new(
        spec: &NetworkSpec,
        task: &SpikingTask,
        strength: f64,
        surrogate: Surrogate,
        omega: &Vector,
    ) -> Result<Self> {
        Self::from_samples(spec, [&task.support, &task.query], strength, surrogate, omega)
    }

    /// A seeded draw: `omega` initialised as the paper's code does, then one task with `shots`
    /// support and query points and their input spikes (the registry's `spiking-synapse`).
    pub fn random(spec: &NetworkSpec, shots: usize, strength: f64, seed: u64) -> Result<Self> {
        spec.validate()?;
        let mut rng = crate::rng::seeded(seed);
        let omega = spec.initial_weights(&mut rng);
        let task = SpikingTask::sample(&mut rng, shots, spec)?;
        Self::new(spec, &task, strength, Surrogate::Eprop, &omega)
    }

    /// The problem on given support and query samples (spike rasters of 0s and 1s, and targets).
    pub fn from_samples(
        spec: &NetworkSpec,
        [support, query]: [&Samples; 2],
        strength: f64,
        surrogate: Surrogate,
        omega: &Vector,
    ) -> Result<Self> {
        spec.validate()?;
        for (name, s) in [("support", support), ("query", query)] {
            if let Some(bad) = s.raster.iter().find(|&&x| x != 0.0 && x != 1.0) {
                return Err(CmlError::invalid(
                    format!("{name} spike raster entry"),
                    bad,
                    "0 (no spike) or 1 (a spike)",
                ));
            }
        }
        if !(strength.is_finite() && strength >= 0.0) {
            return Err(CmlError::invalid(
                "strength",
                strength,
                "a finite number, at least 0",
            ));
        }
        if omega.len() != spec.param_count() {
            return Err(CmlError::invalid(
                "omega length",
                omega.len(),
                format!(
                    "{} for the network {}-{}-1",
                    spec.param_count(),
                    spec.inputs,
                    spec.neurons
                ),
            ));
        }
        let column = |t: &[f64]| Tensor::from_slice(t, (t.len(), 1), &Device::Cpu);
        Ok(SpikingSynapse {
            net: SpikingNet { spec: spec.clone() },
            strength,
            surrogate,
            kernel: SpikingKernel::new(spec, support.clone(), query.clone())?,
            samples: [support.clone(), query.clone()],
            support: SpikeInputs::new(spec, &support.raster)?,
            query: SpikeInputs::new(spec, &query.raster)?,
            y_support: column(&support.targets)?,
            y_query: column(&query.targets)?,
            omega: to_tensor(omega)?,
        })
    }

    /// The same problem with e-prop summing its gradients as `accumulation` says (event-driven by
    /// default; the dense path is the reference the benches and tests compare it with).
    pub fn with_accumulation(mut self, accumulation: Accumulation) -> Self {
        self.kernel = self.kernel.with_accumulation(accumulation);
        self
    }

    /// The fast path's losses at `phi` (support, query and the spike rate), without gradients.
    pub fn losses(&self, phi: &[f64]) -> Losses {
        let mut b = self.kernel.buffers();
        self.kernel.run(&mut b, phi, 1.0, None)
    }

    fn mse(
        &self,
        phi: &Tensor,
        inputs: &SpikeInputs,
        targets: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let p = self.net.predict(phi, inputs, self.surrogate)?;
        Ok(((p.output - targets)?.sqr()?.mean_all()?, p.rate))
    }
}

impl BilevelProblem for SpikingSynapse {
    fn dims(&self) -> Dims {
        let p = self.net.spec.param_count();
        Dims { phi: p, theta: p }
    }

    fn inner_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        let s = &self.net.spec;
        let (mse, rate) = self.mse(phi, &self.support, &self.y_support)?;
        let rate_penalty = ((rate - s.rate_target)?.sqr()? * s.rate_strength)?;
        let pull = ((phi - theta)?.sqr()?.sum_all()? * (self.strength / 2.0))?;
        (mse + rate_penalty)? + pull
    }

    fn outer_loss(&self, phi: &Tensor, _theta: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.mse(phi, &self.query, &self.y_query)?.0)
    }

    /// The fast weights start at `omega` (the paper's code: "from theta").
    fn initial_phi(&self, theta: &Tensor) -> Result<Tensor> {
        Ok(theta.clone())
    }

    fn first_order(&self) -> Option<&dyn FirstOrderPhase> {
        match self.surrogate {
            Surrogate::Eprop => Some(self),
            Surrogate::Bptt => None,
        }
    }

    /// Exact only for the smooth network of docs/SPIKING.md §3a: soft spikes, no reset (always
    /// treated as a constant), and no recurrent spike cut from the graph.
    fn surrogate_derivative(&self) -> Option<&'static str> {
        let s = &self.net.spec;
        let exact = s.spike == Spike::Soft && !s.reset && (!s.recurrent || self.surrogate == Surrogate::Bptt);
        (!exact).then_some(
            "its spikes are Heaviside steps whose derivative a pseudo-derivative stands in for (and e-prop cuts \
             the recurrent spikes and holds the reset constant): it has no exact meta-gradient, and second-order \
             products would differentiate the stand-in (docs/SPIKING.md §3)",
        )
    }
}

impl ProblemInstance for SpikingSynapse {
    fn name(&self) -> &'static str {
        "spiking-synapse"
    }

    fn theta(&self) -> &Tensor {
        &self.omega
    }
}

/// The network's sizes and constants, as scalars of the instance file.
const COUNTS: [&str; 3] = ["inputs", "neurons", "steps"];
const CONSTANTS: [&str; 7] = [
    "tuning_variance",
    "tau_membrane",
    "tau_readout",
    "threshold",
    "gamma",
    "rate_strength",
    "rate_target",
];

impl ToInstanceFile for SpikingSynapse {
    /// The input spike trains are stored as drawn (docs/PROBLEMS.md gives their generator), one
    /// row of `steps x inputs` 0s and 1s per sample, row-major by step.
    fn to_instance(&self) -> InstanceFile {
        let s = &self.net.spec;
        let mut f = InstanceFile::new(self.name(), None);
        for (name, v) in COUNTS.iter().zip([s.inputs, s.neurons, s.steps]) {
            f.push_scalar(name, v as f64);
        }
        let constants = [
            s.tuning_variance,
            s.tau_membrane,
            s.tau_readout,
            s.threshold,
            s.gamma,
            s.rate_strength,
            s.rate_target,
        ];
        for (name, v) in CONSTANTS.iter().zip(constants) {
            f.push_scalar(name, v);
        }
        f.push_flag("recurrent", s.recurrent);
        f.push_flag("reset", s.reset);
        f.push_flag("soft_spikes", s.spike == Spike::Soft);
        f.push_flag("surrogate_bptt", self.surrogate == Surrogate::Bptt);
        f.push_scalar("strength", self.strength);
        for (name, samples) in ["support", "query"].iter().zip(&self.samples) {
            let rows = samples.targets.len();
            f.push_matrix(
                &format!("raster_{name}"),
                &DMatrix::from_row_slice(rows, samples.raster.len() / rows, &samples.raster),
            );
            f.push_vector(
                &format!("targets_{name}"),
                &Vector::from_column_slice(&samples.targets),
            );
        }
        f.push_vector("theta", &to_dvector(&self.omega).expect("a vector"));
        f
    }
}

impl SpikingSynapse {
    /// Rebuilds the problem from its instance file ([`ToInstanceFile::to_instance`]).
    pub fn from_instance(mut r: InstanceReader) -> Result<Self> {
        let [inputs, neurons, steps] = COUNTS.map(|name| r.count(name));
        let [
            tuning_variance,
            tau_membrane,
            tau_readout,
            threshold,
            gamma,
            rate_strength,
            rate_target,
        ] = CONSTANTS.map(|name| r.scalar(name));
        let spec = NetworkSpec {
            inputs: inputs?,
            neurons: neurons?,
            steps: steps?,
            tuning_variance: tuning_variance?,
            tau_membrane: tau_membrane?,
            tau_readout: tau_readout?,
            threshold: threshold?,
            gamma: gamma?,
            recurrent: r.flag("recurrent")?,
            reset: r.flag("reset")?,
            spike: if r.flag("soft_spikes")? {
                Spike::Soft
            } else {
                Spike::Heaviside
            },
            rate_strength: rate_strength?,
            rate_target: rate_target?,
        };
        spec.validate()?;
        let surrogate = if r.flag("surrogate_bptt")? {
            Surrogate::Bptt
        } else {
            Surrogate::Eprop
        };
        let strength = r.scalar("strength")?;
        let mut read = |name: &str| -> Result<Samples> {
            let raster = r.matrix(&format!("raster_{name}"), None, Some(spec.steps * spec.inputs))?;
            let targets = r.vector(&format!("targets_{name}"), Some(raster.nrows()))?;
            Ok(Samples {
                raster: raster.transpose().as_slice().to_vec(),
                targets: targets.as_slice().to_vec(),
            })
        };
        let (support, query) = (read("support")?, read("query")?);
        let omega = r.vector("theta", Some(spec.param_count()))?;
        r.finish()?;
        Self::from_samples(&spec, [&support, &query], strength, surrogate, &omega)
    }
}

/// The fast path's buffers with `omega` fixed for the phase.
struct PhaseBuffers {
    buffers: Buffers,
    omega: Vec<f64>,
}

impl FirstOrderPhase for SpikingSynapse {
    fn workspace(&self, theta: &[f64]) -> Result<Workspace> {
        Ok(Box::new(PhaseBuffers {
            buffers: self.kernel.buffers(),
            omega: theta.to_vec(),
        }))
    }

    fn phase_gradient(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        grad_phi: &mut [f64],
        grad_theta: Option<&mut [f64]>,
    ) -> f64 {
        let w = downcast::<PhaseBuffers>(workspace);
        let losses = self.kernel.run(&mut w.buffers, phi, beta, Some(grad_phi));
        let mut pull = 0.0;
        for (k, g) in grad_phi.iter_mut().enumerate() {
            let d = phi[k] - w.omega[k];
            pull += d * d;
            *g += self.strength * d;
        }
        if let Some(gt) = grad_theta {
            for (k, g) in gt.iter_mut().enumerate() {
                *g = -self.strength * (phi[k] - w.omega[k]);
            }
        }
        let query = if beta == 0.0 { 0.0 } else { beta * losses.query_mse };
        losses.support_mse + losses.rate_penalty + self.strength / 2.0 * pull + query
    }
}
