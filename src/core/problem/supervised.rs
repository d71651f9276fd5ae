//! The data of one supervised task, as the network models (the complex synapse, the gain
//! modulation) need it: support rows for the inner loss, query rows for the outer loss, both
//! scored by a (possibly masked) mean squared error or by the softmax cross-entropy. Sinusoid
//! regression, the wheel bandit's reward regression (docs/BANDIT.md) and few-shot digit
//! classification (docs/DIGITS.md) are the task families.

use super::InstanceFile;
use super::instance::InstanceReader;
use crate::engine::mlp_kernel::MlpKernel;
use crate::error::Result;
use crate::mlp::{Mlp, mse, softmax_cross_entropy};
use candle_core::Tensor;

/// A task a network model can be fitted to.
pub trait SupervisedTask: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Registry names of the complex synapse and of the gain modulation on this task family.
    const SYNAPSE_NAME: &'static str;
    const MODULATION_NAME: &'static str;

    /// Input and output widths a network needs for this task.
    fn input_dim(&self) -> usize;
    fn output_dim(&self) -> usize;

    /// The task's arrays as tensors, for the Candle losses.
    fn tensors(&self) -> Result<TaskTensors>;

    /// The fast engine's kernel of `net` on this task (`net` has the task's widths): the same
    /// losses as [`TaskTensors`], support rows then query rows.
    fn kernel(&self, net: &Mlp) -> MlpKernel;

    /// Writes the task into an instance file, and reads back what was written.
    fn push(&self, file: &mut InstanceFile);
    fn read(reader: &mut InstanceReader) -> Result<Self>;

    /// Whether `net` maps this task's inputs to its outputs.
    fn fits(&self, net: &Mlp) -> bool {
        net.sizes.first() == Some(&self.input_dim()) && net.sizes.last() == Some(&self.output_dim())
    }
}

/// A task's arrays: inputs `(N, in)`, targets `(N, out)` and, where only some outputs are
/// scored, a 0/1 mask shaped as the targets. With `cross_entropy` the targets are one-hot labels
/// and the outputs logits.
#[derive(Debug, Clone)]
pub struct TaskTensors {
    pub cross_entropy: bool,
    pub x_support: Tensor,
    pub y_support: Tensor,
    pub mask_support: Option<Tensor>,
    pub x_query: Tensor,
    pub y_query: Tensor,
    pub mask_query: Option<Tensor>,
}

impl TaskTensors {
    /// The support (inner) data loss of predictions `(N, out)`.
    pub fn support_loss(&self, prediction: &Tensor) -> candle_core::Result<Tensor> {
        self.loss(prediction, &self.y_support, self.mask_support.as_ref())
    }

    /// The query (outer) data loss.
    pub fn query_loss(&self, prediction: &Tensor) -> candle_core::Result<Tensor> {
        self.loss(prediction, &self.y_query, self.mask_query.as_ref())
    }

    fn loss(
        &self,
        prediction: &Tensor,
        target: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        if self.cross_entropy {
            softmax_cross_entropy(prediction, target)
        } else {
            masked_mse(prediction, target, mask)
        }
    }
}

/// Without a mask the mean of all squared errors; with one, the sum of the scored squared
/// errors over the row count (with one scored output per row, the mean over rows).
fn masked_mse(prediction: &Tensor, target: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match mask {
        None => mse(prediction, target),
        Some(m) => {
            let rows = prediction.dim(0)? as f64;
            ((prediction - target)? * m)?.sqr()?.sum_all()? / rows
        }
    }
}
