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

/// SplitMix64's finaliser: a bijection of 64-bit words whose every output bit depends on every
/// input bit.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash of several words, each folded in through SplitMix64, so that different tuples give
/// unrelated values (unlike an XOR of them, where `x ^ x` cancels).
pub fn hash_words(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x6a09_e667_f3bc_c908, |h, &w| splitmix64(h ^ splitmix64(w)))
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
