//! The tanh multilayer perceptron (its Candle form) shared by the problems: parameters in one
//! flat vector, so that any slice of them can be a fast or a meta-parameter, its layout and its
//! losses. The bilevel problems built on it (complex synapse, modulation, the weight-decay
//! networks) live in `problem/`; its hand-derived kernels in `engine::mlp_kernel`. (The paper's
//! "models" of how a brain could meta-learn, synapse and modulation, are `meta_training::ModelSpec`.)

use crate::error::{CmlError, Result};
use crate::linalg::Vector;
use crate::rng::{Rng, normal};
use candle_core::Tensor;

/// Layer sizes `[in, hidden..., out]`. Parameters are stored layer by layer: the weight
/// matrix `(fan_in x fan_out)` row-major, then the bias `(fan_out)`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mlp {
    pub sizes: Vec<usize>,
}

/// The layer sizes as the tables write them: `1-40-40-1`.
impl std::fmt::Display for Mlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<String> = self.sizes.iter().map(usize::to_string).collect();
        f.write_str(&sizes.join("-"))
    }
}

/// Where one layer's parameters sit in the flat vector.
#[derive(Debug, Clone, Copy)]
pub struct Layer {
    pub offset: usize,
    pub fan_in: usize,
    pub fan_out: usize,
}

impl Layer {
    /// Number of parameters of the layer (weights and biases).
    #[allow(clippy::len_without_is_empty)] // a layer always has parameters
    pub fn len(&self) -> usize {
        self.fan_in * self.fan_out + self.fan_out
    }

    pub fn weight(&self, params: &Tensor) -> candle_core::Result<Tensor> {
        params
            .narrow(0, self.offset, self.fan_in * self.fan_out)?
            .reshape((self.fan_in, self.fan_out))
    }

    pub fn bias(&self, params: &Tensor) -> candle_core::Result<Tensor> {
        params.narrow(0, self.offset + self.fan_in * self.fan_out, self.fan_out)
    }

    /// `x W + b` for a batch `x` of shape `(N, fan_in)`.
    pub fn affine(&self, params: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight(params)?)?
            .broadcast_add(&self.bias(params)?)
    }
}

impl Mlp {
    pub fn new(sizes: Vec<usize>) -> Result<Self> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(CmlError::invalid(
                "network sizes",
                format!("{sizes:?}"),
                "need at least an input and an output size, each at least 1 (e.g. 1-40-40-1)",
            ));
        }
        Ok(Mlp { sizes })
    }

    /// Parses `1-40-40-1`.
    pub fn parse(s: &str) -> Result<Self> {
        let sizes: std::result::Result<Vec<usize>, _> = s.split('-').map(str::parse).collect();
        let sizes = sizes.map_err(|_| {
            CmlError::invalid("network sizes", s, "layer sizes joined by '-', e.g. 1-40-40-1")
        })?;
        Self::new(sizes)
    }

    pub fn layers(&self) -> Vec<Layer> {
        let mut offset = 0;
        self.sizes
            .windows(2)
            .map(|w| {
                let layer = Layer {
                    offset,
                    fan_in: w[0],
                    fan_out: w[1],
                };
                offset += layer.len();
                layer
            })
            .collect()
    }

    pub fn param_count(&self) -> usize {
        self.layers().iter().map(Layer::len).sum()
    }

    /// The layer sizes as an instance-file vector.
    pub fn sizes_vector(&self) -> Vector {
        Vector::from_iterator(self.sizes.len(), self.sizes.iter().map(|&s| s as f64))
    }

    /// Reads back what [`Mlp::sizes_vector`] wrote.
    pub fn from_sizes_vector(v: &Vector) -> Result<Self> {
        if v.iter().any(|&s| s < 1.0 || s.fract() != 0.0 || s > 1e6) {
            return Err(CmlError::invalid(
                "network sizes",
                format!("{:?}", v.as_slice()),
                "whole numbers from 1 to 1e6",
            ));
        }
        Self::new(v.iter().map(|&s| s as usize).collect())
    }

    /// tanh on every hidden layer, linear output; `x` is `(N, in)`, the result `(N, out)`.
    pub fn forward(&self, params: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        let layers = self.layers();
        let last = layers.len() - 1;
        layers[last].affine(params, &self.hidden(params, x, &layers[..last])?)
    }

    /// The last hidden layer's output `(N, sizes[len - 2])`: the features a linear readout sees.
    pub fn features(&self, params: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        let layers = self.layers();
        self.hidden(params, x, &layers[..layers.len() - 1])
    }

    fn hidden(&self, params: &Tensor, x: &Tensor, layers: &[Layer]) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for layer in layers {
            h = layer.affine(params, &h)?.tanh()?;
        }
        Ok(h)
    }

    /// Weights `N(0, 1 / fan_in)`, biases zero.
    pub fn init(&self, rng: &mut Rng) -> Vector {
        let mut v = Vec::with_capacity(self.param_count());
        for layer in self.layers() {
            let scale = 1.0 / (layer.fan_in as f64).sqrt();
            v.extend((0..layer.fan_in * layer.fan_out).map(|_| scale * normal(rng)));
            v.extend(std::iter::repeat_n(0.0, layer.fan_out));
        }
        Vector::from_vec(v)
    }
}

/// Mean squared error `1/N sum (prediction - target)^2` (no factor 1/2).
pub fn mse(prediction: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    (prediction - target)?.sqr()?.mean_all()
}

/// `log softmax(z)` over the last dimension of `(N, C)` logits, built from differentiable
/// operations (Candle's own softmax has no backward pass): `z - logsumexp(z)`, with the row
/// maximum subtracted inside the exponential and added back outside. The maximum is detached: the
/// expression does not depend on it, so its derivative is not needed, to any order.
pub fn log_softmax(z: &Tensor) -> candle_core::Result<Tensor> {
    let m = z.max_keepdim(1)?.detach();
    let lse = (z.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()? + m)?;
    z.broadcast_sub(&lse)
}

/// Mean softmax cross-entropy of logits `(N, C)` against one-hot labels `(N, C)`:
/// `1/N sum_i (logsumexp(z_i) - z_i . t_i)`.
pub fn softmax_cross_entropy(logits: &Tensor, one_hot: &Tensor) -> candle_core::Result<Tensor> {
    (log_softmax(logits)? * one_hot)?.sum_all()?.neg()? / logits.dim(0)? as f64
}
