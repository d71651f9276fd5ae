//! Hand-derived forward and backward passes of a tanh MLP on a weighted squared error
//! (docs/ENGINE.md §1), on preallocated buffers.
//!
//! Layer `l`: `z_l = h_{l-1} W_l + b_l`; on hidden layers, optionally modulated per unit,
//! `u_l = z_l * a_l + s_l` (else `u_l = z_l`), `h_l = tanh(u_l)`; the last layer is linear.
//! The data loss is `sum_i c_i ||m_i * (y_i - t_i)||^2` over rows `i`, with a weight `c_i` per
//! row and an optional 0/1 mask `m_i` per output (all ones without one; a bandit task scores only
//! the pulled arm), so that one pass over `[support; query]` rows gives `L_in + beta L_out` of a
//! squared-error model.
//!
//! Backward, with `dY_i = 2 c_i m_i * (y_i - t_i)` and `dZ_L = dY`:
//! `dW_l = h_{l-1}^T dZ_l`, `db_l = sum_i dZ_l`, `dH_{l-1} = dZ_l W_l^T`,
//! `dU_{l-1} = dH_{l-1} * (1 - h_{l-1}^2)`, `da = sum_i dU * z`, `ds = sum_i dU`, `dZ = dU * a`.

use super::matmul::{Product, View, ViewMut};
use super::tanh::tanh_in_place;
use crate::model::mlp::{Layer, Mlp};

/// How a row's outputs `y_i` are scored against its targets `t_i`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputLoss {
    /// `||m_i * (y_i - t_i)||^2`.
    #[default]
    SquaredError,
    /// `logsumexp(y_i) - t_i . y_i` for a one-hot `t_i`: the softmax cross-entropy of the logits
    /// `y_i`, with gradient `softmax(y_i) - t_i` (docs/ENGINE.md §1).
    SoftmaxCrossEntropy,
}

/// The network's shape and its fixed data: inputs and targets, support rows then query rows.
#[derive(Debug, Clone)]
pub struct MlpKernel {
    layers: Vec<Layer>,
    /// `(n_support + n_query) x in`, row-major.
    x: Vec<f64>,
    /// `(n_support + n_query) x out`, row-major.
    t: Vec<f64>,
    /// Same shape as `t`: which outputs enter the loss (`None`: all).
    mask: Option<Vec<f64>>,
    loss: OutputLoss,
    n_support: usize,
    n_query: usize,
    /// Loss weight of a support row in `L_in` and of a query row in `L_out`.
    support_weight: f64,
    query_weight: f64,
}

/// Where [`MlpKernel::loss_and_gradient`] writes the gradients.
pub struct MlpGradients<'a> {
    /// The network parameters' gradient (laid out as [`Mlp`]), for layers `first_layer..`;
    /// earlier layers' entries are left as they were (a model that does not need them skips them).
    pub params: &'a mut [f64],
    pub first_layer: usize,
    /// The modulation's gradient; required when the network is modulated.
    pub modulation: Option<&'a mut [f64]>,
}

impl<'a> MlpGradients<'a> {
    /// Every layer's weight gradient, no modulation.
    pub fn all(params: &'a mut [f64]) -> Self {
        MlpGradients {
            params,
            first_layer: 0,
            modulation: None,
        }
    }
}

/// The planned products of one layer at one row count (each in column-major form, see
/// [`super::matmul`]): `Z^T = W^T H^T`, `dW^T = dZ^T H`, `dH^T = W dZ^T`.
#[derive(Debug, Clone, Copy)]
struct LayerProducts {
    forward: Product,
    weight_gradient: Product,
    backward: Product,
}

impl LayerProducts {
    fn new(layer: &Layer, rows: usize) -> Self {
        let (fi, fo) = (layer.fan_in, layer.fan_out);
        LayerProducts {
            forward: Product::new(fo, fi, rows, true),
            weight_gradient: Product::new(fo, rows, fi, true),
            // W as the left factor from its transposed copy, which has unit row stride.
            backward: Product::new(fi, fo, rows, true),
        }
    }
}

/// Activations and back-propagated errors of one pass, sized for all rows, and the products
/// planned for the free phase's rows (support only) and the nudged phases' (all).
#[derive(Debug, Clone)]
pub struct MlpBuffers {
    free_products: Vec<LayerProducts>,
    nudged_products: Vec<LayerProducts>,
    /// `h[0]` is the input, `h[l + 1]` the output of layer `l`.
    h: Vec<Vec<f64>>,
    /// `z_l` of modulated hidden layers (needed for the gains' gradient).
    z: Vec<Vec<f64>>,
    /// `dZ_l` per layer.
    dz: Vec<Vec<f64>>,
    /// `W_l^T`, row-major, for the backward product (a copy is cheaper than a strided product).
    wt: Vec<Vec<f64>>,
}

impl MlpKernel {
    /// `x` and `t` hold the support rows, then the query rows, row-major. `support_weight` and
    /// `query_weight` are `c_i` of one row in `L_in` and in `L_out` (e.g. `1 / (N out)` for a mean).
    pub fn new(
        net: &Mlp,
        x: Vec<f64>,
        t: Vec<f64>,
        n_support: usize,
        support_weight: f64,
        query_weight: f64,
    ) -> Self {
        let (d_in, d_out) = (net.sizes[0], *net.sizes.last().expect("at least two sizes"));
        let rows = x.len() / d_in;
        assert_eq!(x.len(), rows * d_in, "inputs must fill whole rows");
        assert_eq!(t.len(), rows * d_out, "one target row per input row");
        assert!(n_support <= rows, "more support rows than rows");
        MlpKernel {
            layers: net.layers(),
            x,
            t,
            mask: None,
            loss: OutputLoss::SquaredError,
            n_support,
            n_query: rows - n_support,
            support_weight,
            query_weight,
        }
    }

    /// Scores only the outputs where `mask` (shaped as the targets) is 1; the others must be 0.
    pub fn with_mask(mut self, mask: Vec<f64>) -> Self {
        assert_eq!(mask.len(), self.t.len(), "one mask entry per target entry");
        assert!(
            mask.iter().all(|&m| m == 0.0 || m == 1.0),
            "a mask holds 0s and 1s"
        );
        self.mask = Some(mask);
        self
    }

    /// Scores rows by the softmax cross-entropy of the outputs (logits) against one-hot targets.
    pub fn with_cross_entropy(mut self) -> Self {
        assert!(self.mask.is_none(), "the cross-entropy takes no mask");
        self.loss = OutputLoss::SoftmaxCrossEntropy;
        self
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Buffers for every row (allocated once per phase, not per step).
    pub fn buffers(&self) -> MlpBuffers {
        let rows = self.n_support + self.n_query;
        let d_in = self.layers[0].fan_in;
        let mut h = vec![self.x.clone()];
        h.extend(self.layers.iter().map(|l| vec![0.0; rows * l.fan_out]));
        debug_assert_eq!(h[0].len(), rows * d_in);
        MlpBuffers {
            free_products: self
                .layers
                .iter()
                .map(|l| LayerProducts::new(l, self.n_support))
                .collect(),
            nudged_products: self.layers.iter().map(|l| LayerProducts::new(l, rows)).collect(),
            z: self.layers.iter().map(|l| vec![0.0; rows * l.fan_out]).collect(),
            dz: self.layers.iter().map(|l| vec![0.0; rows * l.fan_out]).collect(),
            wt: self
                .layers
                .iter()
                .map(|l| vec![0.0; l.fan_in * l.fan_out])
                .collect(),
            h,
        }
    }

    /// Data loss of the phase with nudging strength `beta`, `L_in + beta L_out` restricted to
    /// the squared errors, at network parameters `params` (laid out as [`Mlp`]) and hidden-layer
    /// modulation `(a_1, s_1, a_2, s_2, ...)`, with its gradients written into `out`.
    pub fn loss_and_gradient(
        &self,
        buf: &mut MlpBuffers,
        params: &[f64],
        modulation: Option<&[f64]>,
        beta: f64,
        out: MlpGradients,
    ) -> f64 {
        let MlpGradients {
            params: grad,
            first_layer: first_weight_grad,
            modulation: mut grad_modulation,
        } = out;
        // The query rows take part only in nudged phases (as `L_in + beta L_out` with beta = 0
        // never evaluates `L_out`).
        let rows = if beta == 0.0 {
            self.n_support
        } else {
            self.n_support + self.n_query
        };
        let products = if beta == 0.0 {
            &buf.free_products
        } else {
            &buf.nudged_products
        };
        let last = self.layers.len() - 1;
        let mut mod_offset = 0;
        for (l, layer) in self.layers.iter().enumerate() {
            let (fi, fo) = (layer.fan_in, layer.fan_out);
            let (before, after) = buf.h.split_at_mut(l + 1);
            let out = &mut after[0][..rows * fo];
            let w = &params[layer.offset..layer.offset + fi * fo];
            let b = &params[layer.offset + fi * fo..layer.offset + layer.len()];
            products[l].forward.run(
                View::row_major(w, fi, fo).t(),
                View::row_major(&before[l], rows, fi).t(),
                ViewMut::row_major(out, rows, fo).t(),
            );
            for row in out.chunks_exact_mut(fo) {
                for (o, bj) in row.iter_mut().zip(b) {
                    *o += bj;
                }
            }
            if l == last {
                break;
            }
            if let Some(m) = modulation {
                let (gain, shift) = (
                    &m[mod_offset..mod_offset + fo],
                    &m[mod_offset + fo..mod_offset + 2 * fo],
                );
                buf.z[l][..rows * fo].copy_from_slice(out);
                for row in out.chunks_exact_mut(fo) {
                    for ((o, a), s) in row.iter_mut().zip(gain).zip(shift) {
                        *o = *o * a + s;
                    }
                }
                mod_offset += 2 * fo;
            }
            tanh_in_place(out);
        }

        // Loss and dY = 2 c_i m_i (y_i - t_i).
        let d_out = self.layers[last].fan_out;
        let y = &buf.h[last + 1][..rows * d_out];
        let dy = &mut buf.dz[last][..rows * d_out];
        let mut loss = 0.0;
        for i in 0..rows {
            let c = if i < self.n_support {
                self.support_weight
            } else {
                beta * self.query_weight
            };
            let (yi, ti) = (
                &y[i * d_out..(i + 1) * d_out],
                &self.t[i * d_out..(i + 1) * d_out],
            );
            let dyi = &mut dy[i * d_out..(i + 1) * d_out];
            match self.loss {
                OutputLoss::SquaredError => {
                    let mut row_sum = 0.0;
                    for j in 0..d_out {
                        let mut r = yi[j] - ti[j];
                        if let Some(m) = &self.mask {
                            r *= m[i * d_out + j];
                        }
                        row_sum += r * r;
                        dyi[j] = 2.0 * c * r;
                    }
                    loss += c * row_sum;
                }
                OutputLoss::SoftmaxCrossEntropy => {
                    // logsumexp shifted by the row's largest logit, so exp never overflows.
                    let m = yi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for (d, &v) in dyi.iter_mut().zip(yi) {
                        *d = (v - m).exp();
                        sum += *d;
                    }
                    let mut picked = 0.0;
                    for j in 0..d_out {
                        picked += ti[j] * yi[j];
                        dyi[j] = c * (dyi[j] / sum - ti[j]);
                    }
                    loss += c * (m + sum.ln() - picked);
                }
            }
        }

        for l in (0..=last).rev() {
            let layer = self.layers[l];
            let (fi, fo) = (layer.fan_in, layer.fan_out);
            let (dz_before, dz_rest) = buf.dz.split_at_mut(l);
            let dz = &dz_rest[0][..rows * fo];
            if l >= first_weight_grad {
                let g = &mut grad[layer.offset..layer.offset + layer.len()];
                let (gw, gb) = g.split_at_mut(fi * fo);
                products[l].weight_gradient.run(
                    View::row_major(dz, rows, fo).t(),
                    View::row_major(&buf.h[l], rows, fi),
                    ViewMut::row_major(gw, fi, fo).t(),
                );
                gb.fill(0.0);
                for row in dz.chunks_exact(fo) {
                    for (g, d) in gb.iter_mut().zip(row) {
                        *g += d;
                    }
                }
            }
            if l == 0 {
                break;
            }
            // Back through layer l to the previous hidden layer's output, then its tanh.
            let w = &params[layer.offset..layer.offset + fi * fo];
            let wt = &mut buf.wt[l];
            for (i, w_row) in w.chunks_exact(fo).enumerate() {
                for (j, &v) in w_row.iter().enumerate() {
                    wt[j * fi + i] = v;
                }
            }
            let prev = &mut dz_before[l - 1][..rows * fi];
            products[l].backward.run(
                View::row_major(wt, fo, fi).t(),
                View::row_major(dz, rows, fo).t(),
                ViewMut::row_major(prev, rows, fi).t(),
            );
            let h = &buf.h[l][..rows * fi];
            for (d, hv) in prev.iter_mut().zip(h) {
                *d *= 1.0 - hv * hv;
            }
            if let Some(m) = modulation {
                // Hidden layer l - 1's gains and shifts sit after those of the layers before it.
                let offset: usize = 2 * self.layers[..l - 1].iter().map(|x| x.fan_out).sum::<usize>();
                let gm = grad_modulation
                    .as_deref_mut()
                    .expect("a modulated network needs a modulation gradient buffer");
                let (ga, gs) = gm[offset..offset + 2 * fi].split_at_mut(fi);
                ga.fill(0.0);
                gs.fill(0.0);
                let z = &buf.z[l - 1][..rows * fi];
                for (du_row, z_row) in prev.chunks_exact(fi).zip(z.chunks_exact(fi)) {
                    for j in 0..fi {
                        ga[j] += du_row[j] * z_row[j];
                        gs[j] += du_row[j];
                    }
                }
                let gain = &m[offset..offset + fi];
                for row in prev.chunks_exact_mut(fi) {
                    for (d, a) in row.iter_mut().zip(gain) {
                        *d *= a;
                    }
                }
            }
        }
        loss
    }
}
