//! A vectorisable `tanh` for the fast engine (docs/ENGINE.md §2).
//!
//! `tanh(x) = e / (e + 2)` with `e = expm1(2x)`. `expm1` is range-reduced,
//! `2x = k ln 2 + r` with `|r| <= ln 2 / 2`, so `expm1(2x) = 2^k expm1(r) + (2^k - 1)`, and
//! `expm1(r)` is a degree-13 Taylor polynomial (truncation below 1e-17 relative on that
//! interval). For `k = 0` the second term is exactly zero, so small arguments keep full
//! relative accuracy (no `1 - 2 / (e^{2x} + 1)` cancellation). It is computed on `|x|`, clamped
//! to 20 (where `tanh` is 1 to double precision), and the sign put back, so it is exactly odd.
//!
//! The loop has no branches and builds `2^k` from bits, so the compiler vectorises it. On x86-64
//! a copy compiled for AVX2 and FMA is chosen at run time. Both copies use the same operations in
//! the same order, with fused multiply-adds (exactly rounded in hardware and in the portable
//! copy's software `fma`, which is slower), so they give identical bits.

/// `2^52 + 2^51`: adding it rounds a float of magnitude below 2^51 to an integer that can be
/// read off the low mantissa bits.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;
/// `ln 2 = LN2_HI + LN2_LO`, the high part with 32 trailing zero bits, so `k LN2_HI` is exact for
/// the `|k| <= 58` that occur here (Cody and Waite's reduction).
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
const INV_LN2: f64 = std::f64::consts::LOG2_E;
/// Beyond this `|tanh(x)|` rounds to 1 (`1 - tanh(20) ~ 8e-18`).
const CLAMP: f64 = 20.0;

/// Taylor coefficients of `(expm1(r) - r) / r^2`: `1/2!, 1/3!, ..., 1/13!`.
const C: [f64; 12] = [
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];

#[inline(always)]
fn tanh_one(x: f64) -> f64 {
    // tanh is odd; on |x| the quotient e / (e + 2) has e >= 0, where it passes on at most the
    // relative error of e (d ln(e / (e + 2)) / d ln e = 2 / (e + 2) <= 1).
    let y = 2.0 * x.abs().min(CLAMP);
    let t = y * INV_LN2 + ROUND_MAGIC;
    let k = t - ROUND_MAGIC;
    let r = (y - k * LN2_HI) - k * LN2_LO;
    let mut q = C[11];
    for &c in C[..11].iter().rev() {
        q = q.mul_add(r, c);
    }
    let p = (r * r).mul_add(q, r); // expm1(r)
    // The low bits of t hold k (two's complement, |k| <= 58); shifting k + 1023 into the exponent
    // field gives 2^k.
    let two_k = f64::from_bits(t.to_bits().wrapping_add(1023) << 52);
    let e = two_k.mul_add(p, two_k - 1.0);
    (e / (e + 2.0)).copysign(x)
}

#[inline(always)]
fn tanh_loop(xs: &mut [f64]) {
    for x in xs.iter_mut() {
        *x = tanh_one(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tanh_avx2(xs: &mut [f64]) {
    tanh_loop(xs)
}

/// Replaces every element by its hyperbolic tangent (within 2 ulp of `f64::tanh`, measured in
/// `tests/engine.rs` over [-25, 25]).
pub fn tanh_in_place(xs: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        unsafe { tanh_avx2(xs) };
        return;
    }
    tanh_loop(xs)
}

/// `tanh(x)` of one number by the same formula (for tests and scalar code).
pub fn tanh(x: f64) -> f64 {
    tanh_one(x)
}
