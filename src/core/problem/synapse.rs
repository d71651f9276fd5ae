//! The complex synapse (MATH.md §5): every weight of an MLP has a fast value `phi_i`, a
//! consolidated value `omega_i` and a strength `lambda_i = exp(rho_i)`:
//!
//! `L_in  = MSE(support; phi) + 1/2 sum_i lambda_i (phi_i - omega_i)^2`,
//! `L_out = MSE(query; phi)`, `theta = (omega, rho)`, the free phase starts at `phi = omega`.
//!
//! `rho` is one per synapse or a single scalar shared by all, or `lambda` is fixed and
//! `theta = omega` (the iMAML-like model). MSE is the plain mean of squared errors (no 1/2),
//! masked on bandit tasks (docs/BANDIT.md). The data come from any [`SupervisedTask`].

use super::instance::InstanceReader;
use super::sinusoid::SinusoidTask;
use super::supervised::{SupervisedTask, TaskTensors};
use super::{BilevelProblem, Dims, InstanceFile, ProblemInstance, ToInstanceFile};
use crate::engine::mlp_kernel::{MlpBuffers, MlpDirection, MlpGradients, MlpKernel};
use crate::engine::reduce::interleaved_sum;
use crate::engine::{FirstOrderPhase, SecondOrderPhase, Workspace, downcast};
use crate::error::{CmlError, Result};
use crate::linalg::{Vector, to_dvector, to_tensor};
use crate::mlp::Mlp;
use crate::rng::{Rng, seeded};
use candle_core::Tensor;

/// The model's shape and initial meta-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynapseSpec {
    pub net: Mlp,
    /// One strength per synapse (`true`) or one shared scalar.
    pub per_synapse: bool,
    /// Initial strength `lambda` (so `rho = ln lambda`), or the fixed one.
    pub strength: f64,
    /// `lambda` fixed at `strength` (may be 0) and not meta-learned: `theta = omega`.
    #[serde(default)]
    pub fixed_strength: bool,
}

impl Default for SynapseSpec {
    fn default() -> Self {
        SynapseSpec {
            net: Mlp {
                sizes: vec![1, 40, 40, 1],
            },
            per_synapse: true,
            strength: 1.0,
            fixed_strength: false,
        }
    }
}

impl SynapseSpec {
    pub fn rho_len(&self) -> usize {
        if self.fixed_strength {
            0
        } else if self.per_synapse {
            self.net.param_count()
        } else {
            1
        }
    }

    /// `omega` from the MLP initialisation, `rho = ln(strength)`.
    pub fn initial_theta(&self, rng: &mut Rng) -> Result<Vector> {
        self.check_strength()?;
        let omega = self.net.init(rng);
        let rho = Vector::from_element(self.rho_len(), self.strength.ln());
        Ok(Vector::from_iterator(
            omega.len() + rho.len(),
            omega.iter().chain(rho.iter()).copied(),
        ))
    }

    fn check_strength(&self) -> Result<()> {
        let ok = self.strength.is_finite()
            && (self.strength > 0.0 || (self.fixed_strength && self.strength == 0.0));
        if ok {
            Ok(())
        } else {
            Err(CmlError::invalid(
                "synapse strength",
                self.strength,
                "lambda must be finite and > 0 (or 0 when fixed)",
            ))
        }
    }
}

#[derive(Debug, Clone)]
pub struct Synapse<T: SupervisedTask = SinusoidTask> {
    spec: SynapseSpec,
    task: T,
    data: TaskTensors,
    theta: Tensor,
    /// The fast path's kernel (where the network's widths fit the task's).
    kernel: Option<MlpKernel>,
}

impl<T: SupervisedTask> Synapse<T> {
    pub fn new(spec: SynapseSpec, task: T, theta: &Vector) -> Result<Self> {
        spec.check_strength()?;
        let expected = spec.net.param_count() + spec.rho_len();
        if theta.len() != expected {
            return Err(CmlError::invalid(
                "synapse theta length",
                theta.len(),
                format!("(omega, rho) for this network has {expected} entries"),
            ));
        }
        let data = task.tensors()?;
        let kernel = task.fits(&spec.net).then(|| task.kernel(&spec.net));
        Ok(Synapse {
            spec,
            task,
            data,
            theta: to_tensor(theta)?,
            kernel,
        })
    }

    pub fn task(&self) -> &T {
        &self.task
    }

    fn omega(&self, theta: &Tensor) -> candle_core::Result<Tensor> {
        theta.narrow(0, 0, self.spec.net.param_count())
    }

    /// `lambda = exp(rho)`, or the fixed strength.
    pub fn strengths(&self, theta: &Tensor) -> candle_core::Result<Tensor> {
        if self.spec.fixed_strength {
            return Tensor::new(&[self.spec.strength], theta.device());
        }
        theta
            .narrow(0, self.spec.net.param_count(), self.spec.rho_len())?
            .exp()
    }

    /// Predictions of the network with weights `phi` at inputs `x` `(N, 1)`.
    pub fn predict(&self, phi: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        self.spec.net.forward(phi, x)
    }

    pub fn from_instance(mut r: InstanceReader) -> Result<Self> {
        let net = Mlp::from_sizes_vector(&r.vector("sizes", None)?)?;
        let per_synapse = r.flag("per_synapse")?;
        // Written only for a fixed strength (older files have none).
        let fixed = r.optional_scalar("fixed_strength");
        let task = T::read(&mut r)?;
        let spec = SynapseSpec {
            net,
            per_synapse,
            strength: fixed.unwrap_or(1.0),
            fixed_strength: fixed.is_some(),
        };
        let theta = r.vector("theta", Some(spec.net.param_count() + spec.rho_len()))?;
        r.finish()?;
        Self::new(spec, task, &theta)
    }
}

impl Synapse<SinusoidTask> {
    /// A seeded draw: initial meta-parameters, then one task with `shots` support/query points.
    pub fn random(spec: &SynapseSpec, shots: usize, seed: u64) -> Result<Self> {
        let mut rng = seeded(seed);
        let theta = spec.initial_theta(&mut rng)?;
        let task = SinusoidTask::sample(&mut rng, shots)?;
        Self::new(spec.clone(), task, &theta)
    }
}

impl<T: SupervisedTask> BilevelProblem for Synapse<T> {
    fn dims(&self) -> Dims {
        let p = self.spec.net.param_count();
        Dims {
            phi: p,
            theta: p + self.spec.rho_len(),
        }
    }

    fn inner_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        let fit = self
            .data
            .support_loss(&self.predict(phi, &self.data.x_support)?)?;
        let pull = (phi - self.omega(theta)?)?
            .sqr()?
            .broadcast_mul(&self.strengths(theta)?)?
            .sum_all()?;
        fit + (pull * 0.5)?
    }

    fn outer_loss(&self, phi: &Tensor, _theta: &Tensor) -> candle_core::Result<Tensor> {
        self.data.query_loss(&self.predict(phi, &self.data.x_query)?)
    }

    fn initial_phi(&self, theta: &Tensor) -> Result<Tensor> {
        Ok(self.omega(theta)?)
    }

    fn first_order(&self) -> Option<&dyn FirstOrderPhase> {
        self.kernel.as_ref().map(|_| self as &dyn FirstOrderPhase)
    }

    fn second_order(&self) -> Option<&dyn SecondOrderPhase> {
        self.kernel.as_ref().map(|_| self as &dyn SecondOrderPhase)
    }
}

impl<T: SupervisedTask> ProblemInstance for Synapse<T> {
    fn name(&self) -> &'static str {
        T::SYNAPSE_NAME
    }

    fn theta(&self) -> &Tensor {
        &self.theta
    }
}

impl<T: SupervisedTask> ToInstanceFile for Synapse<T> {
    fn to_instance(&self) -> InstanceFile {
        let mut f = InstanceFile::new(self.name(), None);
        f.push_vector("sizes", &self.spec.net.sizes_vector());
        f.push_flag("per_synapse", self.spec.per_synapse);
        if self.spec.fixed_strength {
            f.push_scalar("fixed_strength", self.spec.strength);
        }
        self.task.push(&mut f);
        f.push_vector("theta", &to_dvector(&self.theta).expect("theta is a vector"));
        f
    }
}

/// The fast path's buffers at one `theta = (omega, rho)`.
struct SynapseWorkspace {
    buffers: MlpBuffers,
    omega: Vec<f64>,
    /// `lambda = exp(rho)`, one per synapse or one shared; or the fixed one.
    lambda: Vec<f64>,
    /// Whether `theta` holds `rho` (else `lambda` is fixed).
    learned: bool,
}

impl<T: SupervisedTask> FirstOrderPhase for Synapse<T> {
    fn workspace(&self, theta: &[f64]) -> Result<Workspace> {
        let kernel = self.kernel.as_ref().ok_or_else(no_kernel)?;
        let p = self.spec.net.param_count();
        check_len("synapse theta", theta.len(), p + self.spec.rho_len())?;
        Ok(Box::new(SynapseWorkspace {
            buffers: kernel.buffers(),
            omega: theta[..p].to_vec(),
            lambda: if self.spec.fixed_strength {
                vec![self.spec.strength]
            } else {
                theta[p..].iter().map(|r| r.exp()).collect()
            },
            learned: !self.spec.fixed_strength,
        }))
    }

    /// `L_beta = MSE_s + beta MSE_q + 1/2 sum_i lambda_i d_i^2` with `d = phi - omega`:
    /// `d_phi` adds `lambda d` to the network's gradient; `d_omega = -lambda d`,
    /// `d_rho_i = 1/2 lambda_i d_i^2` (summed over synapses when `rho` is shared).
    fn phase_gradient(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        grad_phi: &mut [f64],
        grad_theta: Option<&mut [f64]>,
    ) -> f64 {
        let ws = downcast::<SynapseWorkspace>(workspace);
        let kernel = self
            .kernel
            .as_ref()
            .expect("a workspace exists only with a kernel");
        let fit = kernel.loss_and_gradient(&mut ws.buffers, phi, None, beta, MlpGradients::all(grad_phi));
        let shared = ws.lambda.len() == 1;
        let n = phi.len();
        // Every slice cut to `n`, so that the compiler sees the indices below in bounds.
        let (omega, lambda, grad_phi) = (&ws.omega[..n], &ws.lambda[..], &mut grad_phi[..n]);
        let pull = match grad_theta {
            // The inner loop's step: a fused loop, its sum interleaved (engine::reduce).
            None if shared => interleaved_sum(n, |i| {
                let (lam, d) = (lambda[0], phi[i] - omega[i]);
                grad_phi[i] += lam * d;
                lam * (d * d)
            }),
            None => {
                let lambda = &lambda[..n];
                interleaved_sum(n, |i| {
                    let (lam, d) = (lambda[i], phi[i] - omega[i]);
                    grad_phi[i] += lam * d;
                    lam * (d * d)
                })
            }
            Some(gt) => {
                let (g_omega, g_rho) = gt.split_at_mut(n);
                g_rho.fill(0.0);
                let learned = ws.learned;
                interleaved_sum(n, |i| {
                    let k = if shared { 0 } else { i };
                    let (lam, d) = (lambda[k], phi[i] - omega[i]);
                    grad_phi[i] += lam * d;
                    g_omega[i] = -(lam * d);
                    if learned {
                        g_rho[k] += 0.5 * (lam * (d * d));
                    }
                    lam * (d * d)
                })
            }
        };
        fit + 0.5 * pull
    }
}

impl<T: SupervisedTask> SecondOrderPhase for Synapse<T> {
    /// `H v = R(d_phi MSE) + lambda v`; from `d_omega = -lambda d` and `d_rho_i = 1/2 lambda_i d_i^2`:
    /// `(M v)_omega = -lambda v`, `(M v)_rho_i = lambda_i d_i v_i` (summed when `rho` is shared).
    fn hessian_vector_product(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        v: &[f64],
        hv: &mut [f64],
        mixed: Option<&mut [f64]>,
    ) {
        let ws = downcast::<SynapseWorkspace>(workspace);
        let kernel = self
            .kernel
            .as_ref()
            .expect("a workspace exists only with a kernel");
        let direction = MlpDirection {
            params: v,
            modulation: None,
        };
        kernel.gradient_derivative(&mut ws.buffers, phi, None, beta, direction, MlpGradients::all(hv));
        let shared = ws.lambda.len() == 1;
        for i in 0..phi.len() {
            hv[i] += ws.lambda[if shared { 0 } else { i }] * v[i];
        }
        if let Some(m) = mixed {
            let (m_omega, m_rho) = m.split_at_mut(phi.len());
            m_rho.fill(0.0);
            for i in 0..phi.len() {
                let k = if shared { 0 } else { i };
                let lam = ws.lambda[k];
                m_omega[i] = -(lam * v[i]);
                if ws.learned {
                    m_rho[k] += lam * (phi[i] - ws.omega[i]) * v[i];
                }
            }
        }
    }

    /// `d_phi L_beta = d_phi MSE + lambda (phi - omega)`: the network part does not depend on
    /// `theta`, so `M^T u = -lambda u_omega + lambda u_rho d` (`u_rho` one per synapse or shared).
    fn mixed_transpose_product(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        _beta: f64,
        u: &[f64],
        out: &mut [f64],
    ) {
        let ws = downcast::<SynapseWorkspace>(workspace);
        let (u_omega, u_rho) = u.split_at(phi.len());
        let shared = ws.lambda.len() == 1;
        for i in 0..phi.len() {
            let k = if shared { 0 } else { i };
            let lam = ws.lambda[k];
            out[i] = -(lam * u_omega[i]);
            if ws.learned {
                out[i] += lam * u_rho[k] * (phi[i] - ws.omega[i]);
            }
        }
    }
}

pub(crate) fn no_kernel() -> CmlError {
    CmlError::invalid(
        "engine",
        "fast",
        "the fast path needs a network whose widths fit the task's (1 input and 1 output for a sinusoid, e.g. 1-40-40-1)",
    )
}

pub(crate) fn check_len(what: &str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(CmlError::invalid(what, got, format!("{expected} entries")))
    }
}
