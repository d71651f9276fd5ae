//! Sums for the engine's hot loops, as eight interleaved partial sums in a fixed order.
//!
//! A single running sum waits one floating-point add latency per term: over the 1761 parameters
//! of the 1-40-40-1 synapse that is longer than a step's 48k multiply-adds take in the products.
//! Eight independent partial sums let the adds overlap. The order of the additions is fixed, so a
//! sum is the same bits on every run and thread count (not the bits of a left-to-right sum).

/// `sum_{i < n} f(i)`: term `i` goes to partial sum `i mod 8` (the last `n mod 8` terms to the
/// first partial sums), and the partial sums are added pairwise. `f` may also write at index `i`
/// (a fused loop); it is called once per index, in increasing order.
#[inline(always)]
pub fn interleaved_sum(n: usize, mut f: impl FnMut(usize) -> f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let full = n / 8 * 8;
    let mut i = 0;
    while i < full {
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane += f(i + k);
        }
        i += 8;
    }
    for (lane, j) in lanes.iter_mut().zip(full..n) {
        *lane += f(j);
    }
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
}

/// `sum_i x_i^2`, interleaved.
pub fn sum_of_squares(x: &[f64]) -> f64 {
    interleaved_sum(x.len(), |i| x[i] * x[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_sums_are_the_sums() {
        // Integers below 2^53 add exactly in any order, so the interleaved sum must equal the
        // closed form n (n - 1) / 2 for every length, remainders included.
        for n in 0..40usize {
            let s = interleaved_sum(n, |i| i as f64);
            assert_eq!(s, (n * n.saturating_sub(1) / 2) as f64, "n = {n}");
        }
        // 1^2 + ... + 10^2 = 10 * 11 * 21 / 6 = 385.
        let x: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(sum_of_squares(&x), 385.0);
    }

    #[test]
    fn the_closure_runs_once_per_index_in_order() {
        let mut seen = Vec::new();
        interleaved_sum(19, |i| {
            seen.push(i);
            0.0
        });
        assert_eq!(seen, (0..19).collect::<Vec<_>>());
    }
}
