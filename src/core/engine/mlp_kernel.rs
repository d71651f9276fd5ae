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
use crate::mlp::{Layer, Mlp};

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

/// A direction `(V, V_m)` in the network's parameters (laid out as [`Mlp`]) and, for a modulated
/// network, in its modulation `(a_1, s_1, a_2, s_2, ...)`.
#[derive(Clone, Copy)]
pub struct MlpDirection<'a> {
    pub params: &'a [f64],
    pub modulation: Option<&'a [f64]>,
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
            // W read in place, row-major, by a general-stride plan: no transposed copy per step
            // (measured as fast as the copy and a unit-stride plan).
            backward: Product::new(fi, fo, rows, false),
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
    /// `dU_l = dH_l * (1 - h_l^2)` of modulated hidden layers (before the gain multiplies it in).
    du: Vec<Vec<f64>>,
    /// The R-operator's passes (docs/ENGINE.md §4): `R z_l`, `R u_l`, `R h_l`, `R dZ_l`, and the
    /// modulation gradient the primal pass writes but the product does not need (empty until the
    /// first product).
    rz: Vec<Vec<f64>>,
    ru: Vec<Vec<f64>>,
    rh: Vec<Vec<f64>>,
    rdz: Vec<Vec<f64>>,
    modulation_scratch: Vec<f64>,
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
        let per_layer = |rows: usize| -> Vec<Vec<f64>> {
            self.layers.iter().map(|l| vec![0.0; rows * l.fan_out]).collect()
        };
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
            z: per_layer(rows),
            dz: per_layer(rows),
            du: per_layer(rows),
            // The R-operator's buffers are made at its first call: phases that need only first
            // derivatives never pay for them.
            rz: Vec::new(),
            ru: Vec::new(),
            rh: Vec::new(),
            rdz: Vec::new(),
            modulation_scratch: Vec::new(),
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
            let prev = &mut dz_before[l - 1][..rows * fi];
            products[l].backward.run(
                View::row_major(w, fi, fo),
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
                buf.du[l - 1][..rows * fi].copy_from_slice(prev);
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

    /// The data loss's Hessian over (network parameters, modulation) times `direction`:
    /// `d/de grad L(params + e V, modulation + e V_m)` at `e = 0`, by Pearlmutter's R-operator
    /// (forward-over-reverse, docs/ENGINE.md §4), written into `out` where
    /// [`MlpKernel::loss_and_gradient`] writes the gradient. One primal pass (without weight
    /// gradients), then a forward and a backward pass of directional derivatives `R x`; no heap
    /// allocation.
    pub fn gradient_derivative(
        &self,
        buf: &mut MlpBuffers,
        params: &[f64],
        modulation: Option<&[f64]>,
        beta: f64,
        direction: MlpDirection,
        out: MlpGradients,
    ) {
        let last = self.layers.len() - 1;
        if buf.rz.is_empty() {
            let rows = self.n_support + self.n_query;
            let per_layer =
                || -> Vec<Vec<f64>> { self.layers.iter().map(|l| vec![0.0; rows * l.fan_out]).collect() };
            (buf.rz, buf.ru, buf.rh, buf.rdz) = (per_layer(), per_layer(), per_layer(), per_layer());
            buf.modulation_scratch = vec![0.0; 2 * self.layers.iter().map(|l| l.fan_out).sum::<usize>()];
        }
        // The primal pass leaves h, z, dU and dZ in the buffers.
        let mut scratch = std::mem::take(&mut buf.modulation_scratch);
        self.loss_and_gradient(
            buf,
            params,
            modulation,
            beta,
            MlpGradients {
                params: &mut [],
                first_layer: last + 1,
                modulation: modulation.map(|_| &mut scratch[..]),
            },
        );
        buf.modulation_scratch = scratch;
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
        let direction_modulation = || {
            direction
                .modulation
                .expect("a modulated network needs a modulation direction")
        };

        // Forward: R z_l = R h_{l-1} W_l + h_{l-1} V_l + V_b (R h_{-1} = R x = 0),
        // R u_l = R z_l * a_l + z_l * V_a + V_s, R h_l = (1 - h_l^2) R u_l.
        let mut mod_offset = 0;
        for (l, layer) in self.layers.iter().enumerate() {
            let (fi, fo) = (layer.fan_in, layer.fan_out);
            let (v, vb) = direction.params[layer.offset..layer.offset + layer.len()].split_at(fi * fo);
            let rz = &mut buf.rz[l][..rows * fo];
            products[l].forward.run(
                View::row_major(v, fi, fo).t(),
                View::row_major(&buf.h[l], rows, fi).t(),
                ViewMut::row_major(rz, rows, fo).t(),
            );
            if l > 0 {
                let w = &params[layer.offset..layer.offset + fi * fo];
                products[l].forward.run_add(
                    View::row_major(w, fi, fo).t(),
                    View::row_major(&buf.rh[l - 1], rows, fi).t(),
                    ViewMut::row_major(rz, rows, fo).t(),
                );
            }
            for row in rz.chunks_exact_mut(fo) {
                for (o, b) in row.iter_mut().zip(vb) {
                    *o += b;
                }
            }
            if l == last {
                break;
            }
            let ru = &mut buf.ru[l][..rows * fo];
            match modulation {
                Some(m) => {
                    let vm = direction_modulation();
                    let (gain, shift_dir) = (
                        &m[mod_offset..mod_offset + fo],
                        &vm[mod_offset + fo..mod_offset + 2 * fo],
                    );
                    let gain_dir = &vm[mod_offset..mod_offset + fo];
                    let z = &buf.z[l][..rows * fo];
                    for ((ru_row, rz_row), z_row) in ru
                        .chunks_exact_mut(fo)
                        .zip(rz.chunks_exact(fo))
                        .zip(z.chunks_exact(fo))
                    {
                        for j in 0..fo {
                            ru_row[j] = rz_row[j] * gain[j] + z_row[j] * gain_dir[j] + shift_dir[j];
                        }
                    }
                    mod_offset += 2 * fo;
                }
                None => ru.copy_from_slice(rz),
            }
            let h = &buf.h[l + 1][..rows * fo];
            for ((rh, ru), h) in buf.rh[l][..rows * fo].iter_mut().zip(ru.iter()).zip(h) {
                *rh = (1.0 - h * h) * ru;
            }
        }

        // R dY_i = c_i l''(y_i) R y_i: `2 c_i m_i R y_i` for the (masked) squared error
        // (m_i^2 = m_i), `c_i (p_i * R y_i - p_i (p_i . R y_i))` with `p_i = softmax(y_i)` for
        // the cross-entropy.
        let d_out = self.layers[last].fan_out;
        let y = &buf.h[last + 1][..rows * d_out];
        let ry = &buf.rz[last][..rows * d_out];
        let rdy = &mut buf.rdz[last][..rows * d_out];
        for i in 0..rows {
            let c = if i < self.n_support {
                self.support_weight
            } else {
                beta * self.query_weight
            };
            let span = i * d_out..(i + 1) * d_out;
            let (yi, ryi, rdyi) = (&y[span.clone()], &ry[span.clone()], &mut rdy[span.clone()]);
            match self.loss {
                OutputLoss::SquaredError => {
                    for j in 0..d_out {
                        let m = self.mask.as_ref().map_or(1.0, |m| m[i * d_out + j]);
                        rdyi[j] = 2.0 * c * m * ryi[j];
                    }
                }
                OutputLoss::SoftmaxCrossEntropy => {
                    let m = yi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    for (p, &v) in rdyi.iter_mut().zip(yi) {
                        *p = (v - m).exp();
                    }
                    let sum: f64 = rdyi.iter().sum();
                    let mut p_dot = 0.0;
                    for (p, r) in rdyi.iter_mut().zip(ryi) {
                        *p /= sum;
                        p_dot += *p * r;
                    }
                    for (p, r) in rdyi.iter_mut().zip(ryi) {
                        *p = c * (*p * (r - p_dot));
                    }
                }
            }
        }

        // Backward: R dW_l = R h_{l-1}^T dZ_l + h_{l-1}^T R dZ_l, R db_l = sum R dZ_l,
        // R dH_{l-1} = R dZ_l W_l^T + dZ_l V_l^T,
        // R dU = (1 - h^2) R dH - 2 h dU R u (as R h = (1 - h^2) R u),
        // R da = sum (R dU * z + dU * R z), R ds = sum R dU, R dZ = R dU * a + dU * V_a.
        let MlpGradients {
            params: grad,
            first_layer,
            modulation: mut grad_modulation,
        } = out;
        for l in (0..=last).rev() {
            let layer = self.layers[l];
            let (fi, fo) = (layer.fan_in, layer.fan_out);
            let dz = &buf.dz[l][..rows * fo];
            let (rdz_before, rdz_rest) = buf.rdz.split_at_mut(l);
            let rdz = &rdz_rest[0][..rows * fo];
            if l >= first_layer {
                let (gw, gb) = grad[layer.offset..layer.offset + layer.len()].split_at_mut(fi * fo);
                products[l].weight_gradient.run(
                    View::row_major(rdz, rows, fo).t(),
                    View::row_major(&buf.h[l], rows, fi),
                    ViewMut::row_major(gw, fi, fo).t(),
                );
                if l > 0 {
                    products[l].weight_gradient.run_add(
                        View::row_major(dz, rows, fo).t(),
                        View::row_major(&buf.rh[l - 1], rows, fi),
                        ViewMut::row_major(gw, fi, fo).t(),
                    );
                }
                gb.fill(0.0);
                for row in rdz.chunks_exact(fo) {
                    for (g, d) in gb.iter_mut().zip(row) {
                        *g += d;
                    }
                }
            }
            if l == 0 {
                break;
            }
            let v = &direction.params[layer.offset..layer.offset + fi * fo];
            let prev = &mut rdz_before[l - 1][..rows * fi];
            let w = &params[layer.offset..layer.offset + fi * fo];
            products[l].backward.run(
                View::row_major(w, fi, fo),
                View::row_major(rdz, rows, fo).t(),
                ViewMut::row_major(prev, rows, fi).t(),
            );
            products[l].backward.run_add(
                View::row_major(v, fi, fo),
                View::row_major(dz, rows, fo).t(),
                ViewMut::row_major(prev, rows, fi).t(),
            );
            let h = &buf.h[l][..rows * fi];
            let du = if modulation.is_some() {
                &buf.du[l - 1][..rows * fi]
            } else {
                &buf.dz[l - 1][..rows * fi]
            };
            let ru = &buf.ru[l - 1][..rows * fi];
            for k in 0..rows * fi {
                prev[k] = (1.0 - h[k] * h[k]) * prev[k] - 2.0 * h[k] * du[k] * ru[k];
            }
            if let Some(m) = modulation {
                let vm = direction_modulation();
                let offset: usize = 2 * self.layers[..l - 1].iter().map(|x| x.fan_out).sum::<usize>();
                let gm = grad_modulation
                    .as_deref_mut()
                    .expect("a modulated network needs a modulation gradient buffer");
                let (ga, gs) = gm[offset..offset + 2 * fi].split_at_mut(fi);
                ga.fill(0.0);
                gs.fill(0.0);
                let (z, rz) = (&buf.z[l - 1][..rows * fi], &buf.rz[l - 1][..rows * fi]);
                for k in 0..rows * fi {
                    let j = k % fi;
                    ga[j] += prev[k] * z[k] + du[k] * rz[k];
                    gs[j] += prev[k];
                }
                let (gain, gain_dir) = (&m[offset..offset + fi], &vm[offset..offset + fi]);
                for k in 0..rows * fi {
                    let j = k % fi;
                    prev[k] = prev[k] * gain[j] + du[k] * gain_dir[j];
                }
            }
        }
    }
}
