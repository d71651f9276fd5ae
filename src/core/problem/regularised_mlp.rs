//! Per-parameter weight decay on a small network (the paper's meta-optimisation, §5.2, in
//! miniature; MATH.md §5):
//!
//! `L_in  = 1/2 MSE(train; phi) + 1/2 sum_i exp(theta_i) phi_i^2`,
//! `L_out = 1/2 MSE(validation; phi)`,
//!
//! a tanh MLP on a regression data set, one weight-decay strength per parameter. A held-out test
//! split measures what meta-learning the strengths bought.

use super::instance::InstanceFile;
use super::{BilevelProblem, Dims, ProblemInstance, ToInstanceFile};
use crate::engine::mlp_kernel::{MlpBuffers, MlpDirection, MlpGradients, MlpKernel};
use crate::engine::reduce::interleaved_sum;
use crate::engine::{FirstOrderPhase, SecondOrderPhase, Workspace, downcast};
use crate::error::{CmlError, Result};
use crate::linalg::{Vector, matrix_to_tensor, to_dvector, to_tensor};
use crate::mlp::Mlp;
use crate::rng::{Rng, seeded};
use candle_core::{Device, Tensor};
use nalgebra::DMatrix;
use rand::seq::SliceRandom;

/// One split of a regression data set.
#[derive(Debug, Clone)]
pub struct Split {
    pub x: DMatrix<f64>,
    pub y: Vector,
    tx: Tensor,
    ty: Tensor,
}

impl Split {
    fn new(x: DMatrix<f64>, y: Vector) -> Result<Self> {
        if x.nrows() == 0 || x.nrows() != y.len() {
            return Err(CmlError::invalid(
                "data split",
                format!("{} rows, {} targets", x.nrows(), y.len()),
                "as many targets as rows, at least one",
            ));
        }
        let tx = matrix_to_tensor(&x)?;
        let ty = Tensor::from_slice(y.as_slice(), (y.len(), 1), &Device::Cpu)?;
        Ok(Split { x, y, tx, ty })
    }

    /// The first `at` rows, and the rest.
    fn cut(&self, at: usize) -> Result<(Split, Split)> {
        let rows = |from: usize, n: usize| {
            Split::new(
                self.x.rows(from, n).into_owned(),
                self.y.rows(from, n).into_owned(),
            )
        };
        Ok((rows(0, at)?, rows(at, self.y.len() - at)?))
    }

    /// `1/2 MSE` of the network with parameters `phi`.
    pub fn half_mse(&self, net: &Mlp, phi: &Tensor) -> candle_core::Result<Tensor> {
        (net.forward(phi, &self.tx)? - &self.ty)?.sqr()?.mean_all()? * 0.5
    }

    /// Each row's `1/2 (f(x) - y)^2` in row order (their mean is [`Split::half_mse`]): the
    /// per-patient scores of a validation search.
    pub fn half_squared_errors(&self, net: &Mlp, phi: &Tensor) -> candle_core::Result<Vec<f64>> {
        ((net.forward(phi, &self.tx)? - &self.ty)?.sqr()? * 0.5)?
            .flatten_all()?
            .to_vec1::<f64>()
    }
}

#[derive(Debug, Clone)]
pub struct RegularisedMlp {
    pub net: Mlp,
    pub train: Split,
    pub validation: Split,
    pub test: Split,
    phi_init: Tensor,
    theta: Tensor,
    /// The fast path's kernel: `1/2 MSE` on the training rows, then the validation rows.
    kernel: MlpKernel,
}

/// The training, validation and test rows of [`RegularisedMlp::diabetes`].
pub const DIABETES_SPLIT: (usize, usize, usize) = (147, 147, 147);

impl RegularisedMlp {
    /// Standardises features and targets (statistics of the whole set), shuffles the rows with
    /// `seed`, splits them into train / validation / test of the given sizes (the rest is
    /// dropped), draws the initial weights, and starts every strength at `decay`.
    pub fn from_data(
        x: &DMatrix<f64>,
        y: &Vector,
        sizes: (usize, usize, usize),
        hidden: usize,
        decay: f64,
        seed: u64,
    ) -> Result<Self> {
        let (n_train, n_val, n_test) = sizes;
        if n_train + n_val + n_test > x.nrows() || n_train == 0 || n_val == 0 || n_test == 0 {
            return Err(CmlError::invalid(
                "split sizes",
                format!("{sizes:?}"),
                format!("positive sizes summing to at most the {} rows", x.nrows()),
            ));
        }
        let standardise = |v: Vec<f64>| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let sd = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n)
                .sqrt()
                .max(1e-12);
            v.into_iter().map(move |a| (a - mean) / sd)
        };
        let mut xs = x.clone();
        for j in 0..x.ncols() {
            let col: Vec<f64> = standardise(x.column(j).iter().copied().collect()).collect();
            xs.set_column(j, &Vector::from_vec(col));
        }
        let ys = Vector::from_iterator(y.len(), standardise(y.iter().copied().collect()));
        let mut rng: Rng = seeded(seed);
        let mut order: Vec<usize> = (0..x.nrows()).collect();
        order.shuffle(&mut rng);
        let take = |from: usize, n: usize| -> Result<Split> {
            let rows = &order[from..from + n];
            Split::new(
                DMatrix::from_fn(n, x.ncols(), |i, j| xs[(rows[i], j)]),
                Vector::from_fn(n, |i, _| ys[rows[i]]),
            )
        };
        let net = Mlp::new(vec![x.ncols(), hidden, 1])?;
        let phi_init = net.init(&mut rng);
        let theta = Vector::from_element(phi_init.len(), decay.ln());
        let (train, validation) = (take(0, n_train)?, take(n_train, n_val)?);
        Ok(RegularisedMlp {
            kernel: half_mse_kernel(&net, &train, &validation),
            train,
            validation,
            test: take(n_train + n_val, n_test)?,
            phi_init: to_tensor(&phi_init)?,
            theta: to_tensor(&theta)?,
            net,
        })
    }

    #[cfg(feature = "datasets")]
    /// The diabetes data set (441 patients as shipped, 10 features, disease progression after a year),
    /// from the `linfa-datasets` crate: 147 / 147 / 147 rows, a 10-16-1 network.
    pub fn diabetes(decay: f64, seed: u64) -> Result<Self> {
        let d = linfa_datasets::diabetes();
        let (n, p) = (d.records.nrows(), d.records.ncols());
        let x = DMatrix::from_row_iterator(n, p, d.records.iter().copied());
        let y = Vector::from_iterator(n, d.targets.iter().copied());
        Self::from_data(&x, &y, DIABETES_SPLIT, 16, decay, seed)
    }

    /// Reads back what [`ToInstanceFile::to_instance`] wrote: the network sizes, the three
    /// splits, the initial weights and the strengths.
    pub fn from_instance(mut r: super::instance::InstanceReader) -> Result<Self> {
        let net = Mlp::from_sizes_vector(&r.vector("sizes", None)?)?;
        if net.sizes.len() != 3 || net.sizes[2] != 1 {
            return Err(r.error(format!(
                "array 'sizes' is {:?}; the weight-decay network has one hidden layer and one output",
                net.sizes
            )));
        }
        let inputs = net.sizes[0];
        let mut split = |name: &str| -> Result<Split> {
            let x = r.matrix(&format!("x_{name}"), None, Some(inputs))?;
            let y = r.vector(&format!("y_{name}"), Some(x.nrows()))?;
            Split::new(x, y)
        };
        let (train, validation, test) = (split("train")?, split("validation")?, split("test")?);
        let n = net.param_count();
        let phi_init = r.vector("phi_init", Some(n))?;
        let theta = r.vector("theta", Some(n))?;
        r.finish()?;
        Ok(RegularisedMlp {
            kernel: half_mse_kernel(&net, &train, &validation),
            train,
            validation,
            test,
            phi_init: to_tensor(&phi_init)?,
            theta: to_tensor(&theta)?,
            net,
        })
    }

    /// `1/2 MSE` on the test split at `phi`.
    pub fn test_loss(&self, phi: &Tensor) -> Result<f64> {
        Ok(self.test.half_mse(&self.net, phi)?.to_scalar::<f64>()?)
    }

    /// The problem with the last `n` rows of its validation split held out, and those rows: the
    /// outer loss then averages over the other validation rows, and the held-out rows, which
    /// neither loss sees, can score choices made about the problem (a selection split).
    pub fn hold_out_of_validation(mut self, n: usize) -> Result<(Self, Split)> {
        let rows = self.validation.y.len();
        if n == 0 || n >= rows {
            return Err(CmlError::invalid(
                "held-out validation rows",
                n,
                format!(
                    "1 to {} (the validation split has {rows} rows)",
                    rows.saturating_sub(1)
                ),
            ));
        }
        let (kept, held) = self.validation.cut(rows - n)?;
        self.kernel = half_mse_kernel(&self.net, &self.train, &kept);
        self.validation = kept;
        Ok((self, held))
    }
}

impl BilevelProblem for RegularisedMlp {
    fn dims(&self) -> Dims {
        let p = self.net.param_count();
        Dims { phi: p, theta: p }
    }

    fn inner_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        self.train.half_mse(&self.net, phi)? + decay_penalty(phi, theta)?
    }

    fn outer_loss(&self, phi: &Tensor, _theta: &Tensor) -> candle_core::Result<Tensor> {
        self.validation.half_mse(&self.net, phi)
    }

    fn initial_phi(&self, _theta: &Tensor) -> Result<Tensor> {
        Ok(self.phi_init.clone())
    }

    fn first_order(&self) -> Option<&dyn FirstOrderPhase> {
        Some(self)
    }

    fn second_order(&self) -> Option<&dyn SecondOrderPhase> {
        Some(self)
    }
}

impl ProblemInstance for RegularisedMlp {
    fn name(&self) -> &'static str {
        "regularised-mlp"
    }

    fn theta(&self) -> &Tensor {
        &self.theta
    }
}

impl ToInstanceFile for RegularisedMlp {
    fn to_instance(&self) -> InstanceFile {
        let mut f = InstanceFile::new(self.name(), None);
        f.push_vector("sizes", &self.net.sizes_vector());
        for (name, s) in [
            ("train", &self.train),
            ("validation", &self.validation),
            ("test", &self.test),
        ] {
            f.push_matrix(&format!("x_{name}"), &s.x);
            f.push_vector(&format!("y_{name}"), &s.y);
        }
        f.push_vector("phi_init", &to_dvector(&self.phi_init).expect("a vector"));
        f.push_vector("theta", &to_dvector(&self.theta).expect("a vector"));
        f
    }
}

/// The engine's kernel of `1/2 MSE` (a mean over rows of one output) on the training rows for
/// `L_in` and the validation rows for `L_out`.
fn half_mse_kernel(net: &Mlp, train: &Split, validation: &Split) -> MlpKernel {
    // nalgebra stores columns first; the kernel wants rows.
    let rows = |m: &DMatrix<f64>| m.transpose().as_slice().to_vec();
    let x: Vec<f64> = [rows(&train.x), rows(&validation.x)].concat();
    let t: Vec<f64> = train.y.iter().chain(validation.y.iter()).copied().collect();
    let (nt, nv) = (train.y.len() as f64, validation.y.len() as f64);
    MlpKernel::new(net, x, t, train.y.len(), 0.5 / nt, 0.5 / nv)
}

/// The fast path's buffers at one `theta`: the decay strengths `exp(theta)`.
struct DecayWorkspace {
    buffers: MlpBuffers,
    decay: Vec<f64>,
}

/// The workspace of a network with one weight-decay strength per parameter (`theta_i` the log
/// strength), shared by the weight-decay problems on any data.
pub(crate) fn decay_workspace(kernel: &MlpKernel, net: &Mlp, theta: &[f64]) -> Result<Workspace> {
    if theta.len() != net.param_count() {
        return Err(CmlError::invalid(
            "weight-decay theta length",
            theta.len(),
            format!("one strength per parameter, {}", net.param_count()),
        ));
    }
    Ok(Box::new(DecayWorkspace {
        buffers: kernel.buffers(),
        decay: theta.iter().map(|t| t.exp()).collect(),
    }))
}

/// `L_beta = data loss (train) + beta data loss (validation) + 1/2 sum_i exp(theta_i) phi_i^2`:
/// `d_phi` adds `exp(theta) phi`; `d_theta_i = 1/2 exp(theta_i) phi_i^2`.
pub(crate) fn decay_phase_gradient(
    kernel: &MlpKernel,
    workspace: &mut Workspace,
    phi: &[f64],
    beta: f64,
    grad_phi: &mut [f64],
    grad_theta: Option<&mut [f64]>,
) -> f64 {
    let ws = downcast::<DecayWorkspace>(workspace);
    let fit = kernel.loss_and_gradient(&mut ws.buffers, phi, None, beta, MlpGradients::all(grad_phi));
    let strengths = &ws.decay;
    let decay = interleaved_sum(phi.len(), |i| {
        grad_phi[i] += strengths[i] * phi[i];
        strengths[i] * (phi[i] * phi[i])
    });
    if let Some(gt) = grad_theta {
        for i in 0..phi.len() {
            gt[i] = 0.5 * (ws.decay[i] * (phi[i] * phi[i]));
        }
    }
    fit + 0.5 * decay
}

/// The second-order products of [`decay_phase_gradient`]'s loss: `H v = R(d_phi data) + exp(theta) v`,
/// and from `d_theta_i = 1/2 exp(theta_i) phi_i^2`, `(M v)_i = exp(theta_i) phi_i v_i`.
pub(crate) fn decay_hessian_vector_product(
    kernel: &MlpKernel,
    workspace: &mut Workspace,
    phi: &[f64],
    beta: f64,
    v: &[f64],
    hv: &mut [f64],
    mixed: Option<&mut [f64]>,
) {
    let ws = downcast::<DecayWorkspace>(workspace);
    let direction = MlpDirection {
        params: v,
        modulation: None,
    };
    kernel.gradient_derivative(&mut ws.buffers, phi, None, beta, direction, MlpGradients::all(hv));
    for i in 0..phi.len() {
        hv[i] += ws.decay[i] * v[i];
    }
    if let Some(m) = mixed {
        for i in 0..phi.len() {
            m[i] = ws.decay[i] * phi[i] * v[i];
        }
    }
}

/// `d_phi_i L_beta` depends on `theta` only through `exp(theta_i) phi_i`: `(M^T u)_i = exp(theta_i) phi_i u_i`.
pub(crate) fn decay_mixed_transpose_product(
    workspace: &mut Workspace,
    phi: &[f64],
    u: &[f64],
    out: &mut [f64],
) {
    let ws = downcast::<DecayWorkspace>(workspace);
    for i in 0..phi.len() {
        out[i] = ws.decay[i] * phi[i] * u[i];
    }
}

/// `1/2 sum_i exp(theta_i) phi_i^2` (Candle).
pub(crate) fn decay_penalty(phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
    (theta.exp()? * phi.sqr()?)?.sum_all()? * 0.5
}

impl FirstOrderPhase for RegularisedMlp {
    fn workspace(&self, theta: &[f64]) -> Result<Workspace> {
        decay_workspace(&self.kernel, &self.net, theta)
    }

    fn phase_gradient(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        grad_phi: &mut [f64],
        grad_theta: Option<&mut [f64]>,
    ) -> f64 {
        decay_phase_gradient(&self.kernel, workspace, phi, beta, grad_phi, grad_theta)
    }
}

impl SecondOrderPhase for RegularisedMlp {
    fn hessian_vector_product(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        beta: f64,
        v: &[f64],
        hv: &mut [f64],
        mixed: Option<&mut [f64]>,
    ) {
        decay_hessian_vector_product(&self.kernel, workspace, phi, beta, v, hv, mixed);
    }

    fn mixed_transpose_product(
        &self,
        workspace: &mut Workspace,
        phi: &[f64],
        _beta: f64,
        u: &[f64],
        out: &mut [f64],
    ) {
        decay_mixed_transpose_product(workspace, phi, u, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_out_validation_rows_moves_them_out_of_the_outer_loss_on_both_paths() {
        // Validation rows 0-4; holding out 2 leaves rows 0-2 in the outer loss (its value the
        // mean of their per-row losses, computed on the whole split before) and rows 3-4 apart;
        // the fast kernel's outer loss must move with it.
        let x = DMatrix::from_fn(12, 3, |i, j| ((i * 3 + j) as f64).sin());
        let y = Vector::from_fn(12, |i, _| (i as f64).cos() * 5.0 + 2.0);
        let p = RegularisedMlp::from_data(&x, &y, (4, 5, 3), 4, 0.1, 7).unwrap();
        let phi = to_tensor(&Vector::from_fn(p.net.param_count(), |i, _| {
            0.1 * (i as f64).sin()
        }))
        .unwrap();
        let whole = p.validation.half_squared_errors(&p.net, &phi).unwrap();
        let theta = p.theta().clone();
        let (kept, held) = p.clone().hold_out_of_validation(2).unwrap();
        let outer = kept.outer_loss(&phi, &theta).unwrap().to_scalar::<f64>().unwrap();
        approx::assert_relative_eq!(outer, whole[..3].iter().sum::<f64>() / 3.0, max_relative = 1e-14);
        let apart = held.half_squared_errors(&p.net, &phi).unwrap();
        assert_eq!(apart.len(), 2);
        for (a, b) in apart.iter().zip(&whole[3..]) {
            approx::assert_relative_eq!(*a, *b, max_relative = 1e-14);
        }
        assert_eq!(kept.train.y, p.train.y);
        assert_eq!(kept.test.y, p.test.y);
        // The fast path: the phase loss at beta 1 minus that at beta 0 is the kernel's outer
        // loss, which must be the same mean.
        let fast = kept.first_order().expect("a fast path");
        let phi_v: Vec<f64> = (0..p.net.param_count()).map(|i| 0.1 * (i as f64).sin()).collect();
        let mut ws = fast
            .workspace(crate::linalg::to_dvector(&theta).unwrap().as_slice())
            .unwrap();
        let mut g = vec![0.0; phi_v.len()];
        let nudged = fast.phase_gradient(&mut ws, &phi_v, 1.0, &mut g, None);
        let free = fast.phase_gradient(&mut ws, &phi_v, 0.0, &mut g, None);
        approx::assert_relative_eq!(nudged - free, outer, max_relative = 1e-10);
        // Nothing, or every row, is not a hold-out.
        for n in [0, 5] {
            let e = p.clone().hold_out_of_validation(n).unwrap_err().to_string();
            assert!(e.contains("1 to 4"), "{e}");
        }
    }

    #[test]
    fn per_row_losses_are_half_squared_targets_at_zero_weights_and_average_to_the_half_mse() {
        // With every weight and bias 0 the tanh network outputs 0, so row i's loss is y_i^2 / 2
        // with y the split's standardised targets, and the rows' mean is `half_mse`.
        let x = DMatrix::from_fn(12, 3, |i, j| ((i * 3 + j) as f64).sin());
        let y = Vector::from_fn(12, |i, _| (i as f64).cos() * 5.0 + 2.0);
        let p = RegularisedMlp::from_data(&x, &y, (4, 5, 3), 4, 0.1, 7).unwrap();
        let zero = to_tensor(&Vector::zeros(p.net.param_count())).unwrap();
        let rows = p.validation.half_squared_errors(&p.net, &zero).unwrap();
        assert_eq!(rows.len(), 5);
        for (r, t) in rows.iter().zip(p.validation.y.iter()) {
            approx::assert_relative_eq!(*r, 0.5 * t * t, max_relative = 1e-15);
        }
        // At other weights, the per-row losses still average to the half MSE.
        let phi = to_tensor(&Vector::from_fn(p.net.param_count(), |i, _| {
            0.1 * (i as f64).sin()
        }))
        .unwrap();
        let rows = p.validation.half_squared_errors(&p.net, &phi).unwrap();
        let mse = p
            .validation
            .half_mse(&p.net, &phi)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        approx::assert_relative_eq!(rows.iter().sum::<f64>() / 5.0, mse, max_relative = 1e-14);
        assert!(
            rows.iter().any(|r| (r - rows[0]).abs() > 1e-6),
            "rows differ: {rows:?}"
        );
    }
}
