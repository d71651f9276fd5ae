//! Seeded random draws. ChaCha8 gives the same stream on every platform, so a seed fixes
//! every number an instance is built from.

use crate::linalg::Vector;
use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub type Rng = ChaCha8Rng;

pub fn seeded(seed: u64) -> Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// An independent stream of the same seed: one per purpose (initialisation, training tasks,
/// held-out tasks), so that changing how many draws one purpose makes leaves the others alone.
pub fn stream(seed: u64, purpose: u64) -> Rng {
    let mut rng = seeded(seed);
    rng.set_stream(purpose);
    rng
}

pub fn normal(rng: &mut Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// Standard normal entries, drawn row by row.
pub fn normal_matrix(rng: &mut Rng, rows: usize, cols: usize) -> DMatrix<f64> {
    let values: Vec<f64> = (0..rows * cols).map(|_| normal(rng)).collect();
    DMatrix::from_row_slice(rows, cols, &values)
}

pub fn normal_vector(rng: &mut Rng, len: usize) -> Vector {
    Vector::from_iterator(len, (0..len).map(|_| normal(rng)))
}
