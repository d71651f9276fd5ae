//! Per-parameter weight decay of an image classifier (the paper's §5.2 on the shipped digits;
//! docs/DIGITS.md §4):
//!
//! `L_in  = CE(train; phi) + 1/2 sum_i exp(theta_i) phi_i^2`,  `L_out = CE(validation; phi)`,
//!
//! a tanh MLP with softmax cross-entropy, one log-strength `theta_i` per parameter (biases
//! included). A test split measures what the learned strengths bought.

use super::{Labelled, Standardiser, accuracy, load_digits, split};
use crate::engine::mlp_kernel::MlpKernel;
use crate::engine::{FirstOrderPhase, SecondOrderPhase, Workspace};
use crate::error::{CmlError, Result};
use crate::linalg::{Vector, to_dvector, to_tensor};
use crate::mlp::{Mlp, log_softmax, softmax_cross_entropy};
use crate::problem::instance::InstanceReader;
use crate::problem::regularised_mlp::{
    decay_hessian_vector_product, decay_mixed_transpose_product, decay_penalty, decay_phase_gradient,
    decay_workspace,
};
use crate::problem::{BilevelProblem, Dims, InstanceFile, ProblemInstance, ToInstanceFile};
use crate::rng::stream;
use candle_core::Tensor;

/// One part of the data as tensors: inputs and one-hot labels.
#[derive(Debug, Clone)]
pub struct Part {
    pub data: Labelled,
    x: Tensor,
    one_hot: Tensor,
}

impl Part {
    pub fn new(data: Labelled, classes: usize) -> Result<Self> {
        if data.is_empty() || data.labels.iter().any(|&l| l >= classes) {
            return Err(CmlError::invalid(
                "classifier data",
                format!("{} rows", data.len()),
                format!("at least one row, labels below {classes}"),
            ));
        }
        let (x, one_hot) = data.tensors(classes)?;
        Ok(Part { x, one_hot, data })
    }

    pub fn cross_entropy(&self, net: &Mlp, phi: &Tensor) -> candle_core::Result<Tensor> {
        softmax_cross_entropy(&net.forward(phi, &self.x)?, &self.one_hot)
    }

    /// Each row's cross-entropy `logsumexp(z_i) - z_i . t_i` (their mean is [`Self::cross_entropy`]):
    /// the per-image losses a validation search pairs its settings on.
    pub fn cross_entropies(&self, net: &Mlp, phi: &Tensor) -> Result<Vec<f64>> {
        let logits = net.forward(phi, &self.x)?;
        Ok((log_softmax(&logits)? * &self.one_hot)?
            .sum(1)?
            .neg()?
            .to_vec1::<f64>()?)
    }

    pub fn accuracy(&self, net: &Mlp, phi: &Tensor) -> Result<f64> {
        accuracy(&net.forward(phi, &self.x)?, &self.data.labels)
    }
}

#[derive(Debug, Clone)]
pub struct DecayClassifier {
    pub net: Mlp,
    pub train: Part,
    pub validation: Part,
    phi_init: Tensor,
    theta: Tensor,
    kernel: MlpKernel,
}

impl DecayClassifier {
    /// `net` maps the rows' features to one logit per class; the inner loop starts at `phi_init`.
    pub fn new(
        net: Mlp,
        train: Labelled,
        validation: Labelled,
        phi_init: &Vector,
        theta: &Vector,
    ) -> Result<Self> {
        let classes = *net.sizes.last().expect("an output layer");
        let p = net.param_count();
        if net.sizes[0] != train.features || phi_init.len() != p || theta.len() != p {
            return Err(CmlError::invalid(
                "weight-decay classifier",
                format!(
                    "{} features, {} initial weights, {} strengths",
                    train.features,
                    phi_init.len(),
                    theta.len()
                ),
                format!(
                    "{} features and {p} of each for network {:?}",
                    net.sizes[0], net.sizes
                ),
            ));
        }
        let all = train.concat(&validation);
        let kernel = MlpKernel::new(
            &net,
            all.x.clone(),
            all.one_hot(classes),
            train.len(),
            1.0 / train.len() as f64,
            1.0 / validation.len() as f64,
        )
        .with_cross_entropy();
        Ok(DecayClassifier {
            train: Part::new(train, classes)?,
            validation: Part::new(validation, classes)?,
            phi_init: to_tensor(phi_init)?,
            theta: to_tensor(theta)?,
            kernel,
            net,
        })
    }
}

impl DecayClassifier {
    /// The registry's draw (docs/PROBLEMS.md): the digit weight-decay job's split and
    /// standardisation at `seed` with `train` and `validation` rows, the network initialised from
    /// the same seed, every strength at `initial_decay`.
    pub fn random(net: Mlp, train: usize, validation: usize, initial_decay: f64, seed: u64) -> Result<Self> {
        if !(initial_decay.is_finite() && initial_decay > 0.0) {
            return Err(CmlError::invalid(
                "initial decay",
                initial_decay,
                "a finite strength above 0 (theta holds its logarithm)",
            ));
        }
        let s = split(&load_digits()?, train, validation, seed)?;
        let standardise = Standardiser::fit(&s.train)?;
        let phi_init = net.init(&mut stream(seed, 1));
        let theta = Vector::from_element(net.param_count(), initial_decay.ln());
        Self::new(
            net,
            standardise.apply(&s.train),
            standardise.apply(&s.validation),
            &phi_init,
            &theta,
        )
    }

    /// Reads back what [`ToInstanceFile::to_instance`] wrote.
    pub fn from_instance(mut r: InstanceReader) -> Result<Self> {
        let net = Mlp::from_sizes_vector(&r.vector("sizes", None)?)?;
        let (features, classes) = (net.sizes[0], *net.sizes.last().expect("an output layer"));
        let train = Labelled::read(&mut r, "train", features, classes)?;
        let validation = Labelled::read(&mut r, "validation", features, classes)?;
        let p = net.param_count();
        let phi_init = r.vector("phi_init", Some(p))?;
        let theta = r.vector("theta", Some(p))?;
        r.finish()?;
        Self::new(net, train, validation, &phi_init, &theta)
    }
}

impl BilevelProblem for DecayClassifier {
    fn dims(&self) -> Dims {
        let p = self.net.param_count();
        Dims { phi: p, theta: p }
    }

    fn inner_loss(&self, phi: &Tensor, theta: &Tensor) -> candle_core::Result<Tensor> {
        self.train.cross_entropy(&self.net, phi)? + decay_penalty(phi, theta)?
    }

    fn outer_loss(&self, phi: &Tensor, _theta: &Tensor) -> candle_core::Result<Tensor> {
        self.validation.cross_entropy(&self.net, phi)
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

impl ProblemInstance for DecayClassifier {
    fn name(&self) -> &'static str {
        "decay-classifier"
    }

    fn theta(&self) -> &Tensor {
        &self.theta
    }
}

impl ToInstanceFile for DecayClassifier {
    fn to_instance(&self) -> InstanceFile {
        let mut f = InstanceFile::new(self.name(), None);
        f.push_vector("sizes", &self.net.sizes_vector());
        self.train.data.push(&mut f, "train");
        self.validation.data.push(&mut f, "validation");
        f.push_vector("phi_init", &to_dvector(&self.phi_init).expect("a vector"));
        f.push_vector("theta", &to_dvector(&self.theta).expect("a vector"));
        f
    }
}

impl FirstOrderPhase for DecayClassifier {
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

impl SecondOrderPhase for DecayClassifier {
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
