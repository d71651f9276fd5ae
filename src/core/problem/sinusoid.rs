//! Few-shot sinusoid regression (MATH.md §5): `y = amplitude * sin(x + phase)`,
//! amplitude ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5], K support and K query points.

use super::InstanceFile;
use super::instance::InstanceReader;
use super::supervised::{SupervisedTask, TaskTensors};
use crate::engine::mlp_kernel::MlpKernel;
use crate::error::{CmlError, Result};
use crate::linalg::Vector;
use crate::mlp::Mlp;
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use rand::Rng as _;

#[derive(Debug, Clone)]
pub struct SinusoidTask {
    pub amplitude: f64,
    pub phase: f64,
    pub x_support: Vector,
    pub y_support: Vector,
    pub x_query: Vector,
    pub y_query: Vector,
}

impl SinusoidTask {
    /// Draws amplitude, phase, then the K support and K query inputs, in that order.
    pub fn sample(rng: &mut Rng, shots: usize) -> Result<Self> {
        if shots == 0 {
            return Err(CmlError::invalid(
                "shots",
                0,
                "a task needs at least 1 support and 1 query point",
            ));
        }
        let amplitude = rng.random_range(0.1..5.0);
        let phase = rng.random_range(0.0..std::f64::consts::PI);
        let mut xs = |n| Vector::from_iterator(n, (0..n).map(|_| rng.random_range(-5.0..5.0)));
        let x_support = xs(shots);
        let x_query = xs(shots);
        let f = |x: &Vector| x.map(|x| amplitude * (x + phase).sin());
        Ok(SinusoidTask {
            amplitude,
            phase,
            y_support: f(&x_support),
            y_query: f(&x_query),
            x_support,
            x_query,
        })
    }

    /// The target function at arbitrary inputs (for plots).
    pub fn target(&self, x: f64) -> f64 {
        self.amplitude * (x + self.phase).sin()
    }
}

/// A column `(N, 1)` tensor.
pub fn column(v: &Vector) -> Result<Tensor> {
    Ok(Tensor::from_slice(v.as_slice(), (v.len(), 1), &Device::Cpu)?)
}

impl SupervisedTask for SinusoidTask {
    const SYNAPSE_NAME: &'static str = "synapse";
    const MODULATION_NAME: &'static str = "modulation";

    fn input_dim(&self) -> usize {
        1
    }

    fn output_dim(&self) -> usize {
        1
    }

    fn tensors(&self) -> Result<TaskTensors> {
        Ok(TaskTensors {
            cross_entropy: false,
            x_support: column(&self.x_support)?,
            y_support: column(&self.y_support)?,
            mask_support: None,
            x_query: column(&self.x_query)?,
            y_query: column(&self.y_query)?,
            mask_query: None,
        })
    }

    /// Mean squared error (no 1/2) on the support rows for `L_in` and on the query rows for
    /// `L_out`.
    fn kernel(&self, net: &Mlp) -> MlpKernel {
        let (ns, nq) = (self.x_support.len(), self.x_query.len());
        let cat = |a: &Vector, b: &Vector| a.iter().chain(b.iter()).copied().collect::<Vec<f64>>();
        MlpKernel::new(
            net,
            cat(&self.x_support, &self.x_query),
            cat(&self.y_support, &self.y_query),
            ns,
            1.0 / ns as f64,
            1.0 / nq as f64,
        )
    }

    /// The task's arrays, and its amplitude and phase for the record.
    fn push(&self, file: &mut InstanceFile) {
        file.push_vector("x_support", &self.x_support);
        file.push_vector("y_support", &self.y_support);
        file.push_vector("x_query", &self.x_query);
        file.push_vector("y_query", &self.y_query);
        file.push_scalar("amplitude", self.amplitude);
        file.push_scalar("phase", self.phase);
    }

    fn read(r: &mut InstanceReader) -> Result<Self> {
        read_task(r)
    }
}

fn read_task(r: &mut InstanceReader) -> Result<SinusoidTask> {
    let x_support = r.vector("x_support", None)?;
    let y_support = r.vector("y_support", Some(x_support.len()))?;
    let x_query = r.vector("x_query", None)?;
    let y_query = r.vector("y_query", Some(x_query.len()))?;
    if x_support.is_empty() || x_query.is_empty() {
        return Err(r.error("a task needs at least one support and one query point".into()));
    }
    Ok(SinusoidTask {
        amplitude: r.scalar("amplitude")?,
        phase: r.scalar("phase")?,
        x_support,
        y_support,
        x_query,
        y_query,
    })
}
