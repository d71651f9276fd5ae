//! The dual system / modulation model (MATH.md §5): a primary tanh MLP with slow, meta-learned
//! weights `W_l, b_l`, whose hidden units are modulated by fast per-task gains `a_l` and shifts
//! `s_l`, with a fast linear readout `(r, r_0)`:
//!
//! `h_l = tanh((h_{l-1} W_l + b_l) * a_l + s_l)`, `y = h_L r + r_0`,
//! `L_in  = MSE(support) + lambda/2 ||phi - phi_init||^2`, `L_out = MSE(query)`,
//! `phi = (a_1, s_1, ..., a_L, s_L, r, r_0)`, `theta = (W, b, phi_init)`.
//!
//! `L_out` depends on the slow weights directly, so the direct term `d_theta L_out` is part of
//! the meta-gradient. Initial values: gains 1, shifts 0, readout `N(0, 1/h_L)`, bias 0.
//! The data come from any [`SupervisedTask`] (MSE masked on bandit tasks, docs/BANDIT.md).

use super::instance::InstanceReader;
use super::sinusoid::SinusoidTask;
use super::supervised::{SupervisedTask, TaskTensors};
use super::synapse::{check_len, no_kernel};
use super::{BilevelProblem, Dims, InstanceFile, ProblemInstance, ToInstanceFile};
use crate::engine::mlp_kernel::{MlpBuffers, MlpDirection, MlpGradients, MlpKernel};
use crate::engine::reduce::interleaved_sum;
use crate::engine::{FirstOrderPhase, SecondOrderPhase, Workspace, downcast};
use crate::error::{CmlError, Result};
use crate::linalg::{Vector, to_dvector, to_tensor};
use crate::mlp::{Layer, Mlp};
use crate::rng::{Rng, normal, seeded};
use candle_core::Tensor;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModulationSpec {
    /// The primary network `[in, hidden..., out]`; its hidden layers are slow, the readout fast.
    pub net: Mlp,
    /// Strength `lambda` of the pull toward `phi_init`.
    pub strength: f64,
}

impl Default for ModulationSpec {
    fn default() -> Self {
        ModulationSpec {
            net: Mlp {
                sizes: vec![1, 40, 40, 1],
            },
            strength: 1.0,
        }
    }
}

/// Where each piece sits: slow hidden layers in `theta[..slow_len]`; gains, shifts and the
/// readout in `phi` (and their initial values in `theta[slow_len..]`).
#[derive(Debug, Clone)]
struct Layout {
    hidden: Vec<Layer>,
    readout: Layer,
    slow_len: usize,
    fast_len: usize,
}

impl Layout {
    fn new(net: &Mlp) -> Result<Self> {
        let mut layers = net.layers();
        if layers.len() < 2 {
            return Err(CmlError::invalid(
                "modulation network sizes",
                format!("{:?}", net.sizes),
                "the modulation model needs at least one hidden layer (e.g. 1-40-40-1)",
            ));
        }
        let last = layers.pop().expect("at least two layers");
        let slow_len: usize = layers.iter().map(Layer::len).sum();
        let gains_len: usize = 2 * layers.iter().map(|l| l.fan_out).sum::<usize>();
        let readout = Layer {
            offset: gains_len,
            fan_in: last.fan_in,
            fan_out: last.fan_out,
        };
        Ok(Layout {
            slow_len,
            fast_len: gains_len + readout.len(),
            hidden: layers,
            readout,
        })
    }

    /// Gains and shifts of hidden layer `l` in `phi`.
    fn modulation(&self, phi: &Tensor, l: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let offset: usize = 2 * self.hidden[..l].iter().map(|h| h.fan_out).sum::<usize>();
        let width = self.hidden[l].fan_out;
        Ok((
            phi.narrow(0, offset, width)?,
            phi.narrow(0, offset + width, width)?,
        ))
    }
}

#[derive(Debug, Clone)]
pub struct Modulation<T: SupervisedTask = SinusoidTask> {
    spec: ModulationSpec,
    layout: Layout,
    task: T,
    data: TaskTensors,
    theta: Tensor,
    /// The fast path's kernel (where the network's widths fit the task's).
    kernel: Option<MlpKernel>,
}

impl ModulationSpec {
    pub fn initial_theta(&self, rng: &mut Rng) -> Result<Vector> {
        let layout = Layout::new(&self.net)?;
        if !(self.strength.is_finite() && self.strength > 0.0) {
            return Err(CmlError::invalid(
                "modulation strength",
                self.strength,
                "lambda must be finite and > 0",
            ));
        }
        let full = self.net.init(rng);
        let mut v: Vec<f64> = full.as_slice()[..layout.slow_len].to_vec();
        for h in &layout.hidden {
            v.extend(std::iter::repeat_n(1.0, h.fan_out));
            v.extend(std::iter::repeat_n(0.0, h.fan_out));
        }
        let scale = 1.0 / (layout.readout.fan_in as f64).sqrt();
        v.extend((0..layout.readout.fan_in * layout.readout.fan_out).map(|_| scale * normal(rng)));
        v.extend(std::iter::repeat_n(0.0, layout.readout.fan_out));
        Ok(Vector::from_vec(v))
    }
}

impl<T: SupervisedTask> Modulation<T> {
    pub fn new(spec: ModulationSpec, task: T, theta: &Vector) -> Result<Self> {
        let layout = Layout::new(&spec.net)?;
        let expected = layout.slow_len + layout.fast_len;
        if theta.len() != expected {
            return Err(CmlError::invalid(
                "modulation theta length",
                theta.len(),
                format!("(W, b, phi_init) for this network has {expected} entries"),
            ));
        }
        let data = task.tensors()?;
        let kernel = task.fits(&spec.net).then(|| task.kernel(&spec.net));
        Ok(Modulation {
            spec,
            layout,
            task,
            data,
            theta: to_tensor(theta)?,
            kernel,
        })
    }

    pub fn task(&self) -> &T {
        &self.task
    }

    /// Predictions with slow weights from `theta` and fast parameters `phi`, inputs `(N, in)`.
    pub fn predict(&self, phi: &Tensor, theta: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (l, layer) in self.layout.hidden.iter().enumerate() {
            let (gain, shift) = self.layout.modulation(phi, l)?;
            h = layer
                .affine(theta, &h)?
                .broadcast_mul(&gain)?
                .broadcast_add(&shift)?
                .tanh()?;
        }
        self.layout.readout.affine(phi, &h)
    }

    fn phi_init(&self, theta: &Tensor) -> candle_core::Result<Tensor> {
        theta.narrow(0, self.layout.slow_len, self.layout.fast_len)
    }

    pub fn from_instance(mut r: InstanceReader) -> Result<Self> {
        let net = Mlp::from_sizes_vector(&r.vector("sizes", None)?)?;
        let strength = r.scalar("strength")?;
        let task = T::read(&mut r)?;
        let theta = r.vector("theta", None)?;
        r.finish()?;
        Self::new(ModulationSpec { net, strength }, task, &theta)
    }
}

impl Modulation<SinusoidTask> {
    pub fn random(spec: &ModulationSpec, shots: usize, seed: u64) -> Result<Self> {
        let mut rng = seeded(seed);
        let theta = spec.initial_theta(&mut rng)?;
        let task = SinusoidTask::sample(&mut rng, shots)?;
        Self::new(spec.clone(), task, &theta)
    }
}

impl<T: SupervisedTask> BilevelProblem for Modulation<T> {
    fn dims(&self) -> Dims {
        Dims {
            phi: self.layout.fast_len,
            theta: self.layout.slow_len + self.layout.fast_len,
        }
    }

    fn inner_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        let fit = self
            .data
            .support_loss(&self.predict(phi, theta, &self.data.x_support)?)?;
        let pull = (phi - self.phi_init(theta)?)?.sqr()?.sum_all()?;
        fit + (pull * (0.5 * self.spec.strength))?
    }

    fn outer_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        self.data
            .query_loss(&self.predict(phi, theta, &self.data.x_query)?)
    }

    fn initial_phi(&self, theta: &Tensor) -> Result<Tensor> {
        Ok(self.phi_init(theta)?)
    }

    fn first_order(&self) -> Option<&dyn FirstOrderPhase> {
        self.kernel.as_ref().map(|_| self as &dyn FirstOrderPhase)
    }

    fn second_order(&self) -> Option<&dyn SecondOrderPhase> {
        self.kernel.as_ref().map(|_| self as &dyn SecondOrderPhase)
    }
}

impl<T: SupervisedTask> ProblemInstance for Modulation<T> {
    fn name(&self) -> &'static str {
        T::MODULATION_NAME
    }

    fn theta(&self) -> &Tensor {
        &self.theta
    }
}

impl<T: SupervisedTask> ToInstanceFile for Modulation<T> {
    fn to_instance(&self) -> InstanceFile {
        let mut f = InstanceFile::new(self.name(), None);
        f.push_vector("sizes", &self.spec.net.sizes_vector());
        f.push_scalar("strength", self.spec.strength);
        self.task.push(&mut f);
        f.push_vector("theta", &to_dvector(&self.theta).expect("theta is a vector"));
        f
    }
}

/// The fast path's buffers at one `theta = (W, b, phi_init)`.
struct ModulationWorkspace {
    buffers: MlpBuffers,
    /// The whole network's parameters in [`Mlp`] layout: the slow hidden layers from `theta`,
    /// the readout copied from `phi` at each step.
    net: Vec<f64>,
    net_grad: Vec<f64>,
    phi_init: Vec<f64>,
    /// A second-order product's direction in the network's layout, and a zero direction for
    /// the modulation.
    net_direction: Vec<f64>,
    zero_modulation: Vec<f64>,
}

impl<T: SupervisedTask> FirstOrderPhase for Modulation<T> {
    fn workspace(&self, theta: &[f64]) -> Result<Workspace> {
        let kernel = self.kernel.as_ref().ok_or_else(no_kernel)?;
        let Layout {
            slow_len, fast_len, ..
        } = self.layout;
        check_len("modulation theta", theta.len(), slow_len + fast_len)?;
        let mut net = vec![0.0; self.spec.net.param_count()];
        net[..slow_len].copy_from_slice(&theta[..slow_len]);
        Ok(Box::new(ModulationWorkspace {
            buffers: kernel.buffers(),
            net_grad: vec![0.0; net.len()],
            net_direction: vec![0.0; net.len()],
            zero_modulation: vec![0.0; self.layout.readout.offset],
            net,
            phi_init: theta[slow_len..].to_vec(),
        }))
    }

    /// `L_beta = MSE_s + beta MSE_q + lambda/2 ||phi - phi_init||^2`: the network's gradient
    /// gives the gains, shifts and readout (in `phi`) and the slow weights (in `theta`);
    /// the pull adds `lambda d` to `d_phi` and gives `d_{phi_init} = -lambda d`.
    fn phase_gradient(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        grad_phi: &mut [f64],
        grad_theta: Option<&mut [f64]>,
    ) -> f64 {
        let ws = downcast::<ModulationWorkspace>(workspace);
        let kernel = self
            .kernel
            .as_ref()
            .expect("a workspace exists only with a kernel");
        let slow_len = self.layout.slow_len;
        let gains_len = self.layout.readout.offset;
        ws.net[slow_len..].copy_from_slice(&phi[gains_len..]);
        // The slow weights' gradient is needed only for d_theta; the readout's always.
        let first = if grad_theta.is_some() {
            0
        } else {
            self.layout.hidden.len()
        };
        let (g_modulation, g_readout) = grad_phi.split_at_mut(gains_len);
        let fit = kernel.loss_and_gradient(
            &mut ws.buffers,
            &ws.net,
            Some(&phi[..gains_len]),
            beta,
            MlpGradients {
                params: &mut ws.net_grad,
                first_layer: first,
                modulation: Some(g_modulation),
            },
        );
        g_readout.copy_from_slice(&ws.net_grad[slow_len..]);
        let (lambda, phi_init) = (self.spec.strength, &ws.phi_init);
        let pull = interleaved_sum(phi.len(), |i| {
            let d = phi[i] - phi_init[i];
            grad_phi[i] += lambda * d;
            d * d
        });
        if let Some(gt) = grad_theta {
            gt[..slow_len].copy_from_slice(&ws.net_grad[..slow_len]);
            for (g, (p, p0)) in gt[slow_len..].iter_mut().zip(phi.iter().zip(&ws.phi_init)) {
                *g = -(lambda * (p - p0));
            }
        }
        fit + pull * (0.5 * lambda)
    }
}

/// A direction of the modulation model's R-operator: in the slow hidden weights and in the fast
/// parameters (`None`: zero).
struct Direction<'a> {
    slow: Option<&'a [f64]>,
    fast: Option<&'a [f64]>,
}

impl<T: SupervisedTask> Modulation<T> {
    /// The network's R-operator at `phi` (modulation and readout from `phi`, slow weights from
    /// the workspace) in `direction`: writes `R(d_phi data)` into `out_phi` and, when asked,
    /// `R(d_slow data)` into `out_slow`.
    fn network_derivative(
        &self,
        ws: &mut ModulationWorkspace,
        (phi, beta): (&[f64], f64),
        Direction { slow, fast }: Direction,
        out_phi: &mut [f64],
        out_slow: Option<&mut [f64]>,
    ) {
        let kernel = self
            .kernel
            .as_ref()
            .expect("a workspace exists only with a kernel");
        let slow_len = self.layout.slow_len;
        let gains_len = self.layout.readout.offset;
        ws.net[slow_len..].copy_from_slice(&phi[gains_len..]);
        let (d_slow, d_readout) = ws.net_direction.split_at_mut(slow_len);
        match slow {
            Some(u) => d_slow.copy_from_slice(u),
            None => d_slow.fill(0.0),
        }
        match fast {
            Some(v) => d_readout.copy_from_slice(&v[gains_len..]),
            None => d_readout.fill(0.0),
        }
        let modulation_direction = fast.map_or(&ws.zero_modulation[..], |v| &v[..gains_len]);
        let first = if out_slow.is_some() {
            0
        } else {
            self.layout.hidden.len()
        };
        let (r_modulation, r_readout) = out_phi.split_at_mut(gains_len);
        kernel.gradient_derivative(
            &mut ws.buffers,
            &ws.net,
            Some(&phi[..gains_len]),
            beta,
            MlpDirection {
                params: &ws.net_direction,
                modulation: Some(modulation_direction),
            },
            MlpGradients {
                params: &mut ws.net_grad,
                first_layer: first,
                modulation: Some(r_modulation),
            },
        );
        r_readout.copy_from_slice(&ws.net_grad[slow_len..]);
        if let Some(o) = out_slow {
            o.copy_from_slice(&ws.net_grad[..slow_len]);
        }
    }
}

impl<T: SupervisedTask> SecondOrderPhase for Modulation<T> {
    /// `H v = R(d_phi data) + lambda v` in the direction `v` of the gains, shifts and readout;
    /// `M v = (R(d_slow data), -lambda v)` (the pull's `d_{phi_init} = -lambda (phi - phi_init)`).
    fn hessian_vector_product(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        v: &[f64],
        hv: &mut [f64],
        mixed: Option<&mut [f64]>,
    ) {
        let ws = downcast::<ModulationWorkspace>(workspace);
        let lambda = self.spec.strength;
        let slow_len = self.layout.slow_len;
        match mixed {
            Some(m) => {
                let (m_slow, m_init) = m.split_at_mut(slow_len);
                self.network_derivative(
                    ws,
                    (phi, beta),
                    Direction {
                        slow: None,
                        fast: Some(v),
                    },
                    hv,
                    Some(m_slow),
                );
                for (o, x) in m_init.iter_mut().zip(v) {
                    *o = -(lambda * x);
                }
            }
            None => self.network_derivative(
                ws,
                (phi, beta),
                Direction {
                    slow: None,
                    fast: Some(v),
                },
                hv,
                None,
            ),
        }
        for (o, x) in hv.iter_mut().zip(v) {
            *o += lambda * x;
        }
    }

    /// `M^T u = R(d_phi data)` in the slow weights' direction `u_slow`, minus `lambda u_{phi_init}`.
    fn mixed_transpose_product(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        u: &[f64],
        out: &mut [f64],
    ) {
        let ws = downcast::<ModulationWorkspace>(workspace);
        let (u_slow, u_init) = u.split_at(self.layout.slow_len);
        self.network_derivative(
            ws,
            (phi, beta),
            Direction {
                slow: Some(u_slow),
                fast: None,
            },
            out,
            None,
        );
        let lambda = self.spec.strength;
        for (o, x) in out.iter_mut().zip(u_init) {
            *o -= lambda * x;
        }
    }
}
