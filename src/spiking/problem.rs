//! Few-shot sinusoid regression with the spiking network (docs/SPIKING.md §4): the complex
//! synapse of the paper's §5.4, whose fast weights `phi = (W_in, W_rec, W_out)` learn a task by
//! e-prop under a pull toward the meta-parameters `theta = omega`:
//!
//! ```text
//! L_in  = support MSE + rate_strength (mean z - rate_target)^2 + strength/2 ||phi - omega||^2
//! L_out = query MSE
//! ```

use super::network::{
    Accumulation, Buffers, Losses, NetworkSpec, Samples, SpikeInputs, SpikingKernel, SpikingNet, Surrogate,
};
use crate::engine::{FirstOrderPhase, Workspace, downcast};
use crate::error::{CmlError, Result};
use crate::linalg::{Vector, to_tensor};
use crate::problem::{BilevelProblem, Dims, ProblemInstance, SinusoidTask};
use crate::rng::Rng;
use candle_core::{Device, Tensor};

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
        spec.validate()?;
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
            kernel: SpikingKernel::new(spec, task.support.clone(), task.query.clone())?,
            support: SpikeInputs::new(spec, &task.support.raster)?,
            query: SpikeInputs::new(spec, &task.query.raster)?,
            y_support: column(&task.support.targets)?,
            y_query: column(&task.query.targets)?,
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
}

impl ProblemInstance for SpikingSynapse {
    fn name(&self) -> &'static str {
        "spiking-synapse"
    }

    fn theta(&self) -> &Tensor {
        &self.omega
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
