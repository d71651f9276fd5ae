//! Statistics over independent meta-training seeds, the units every comparison of the write-up
//! is made over (docs/PROTOCOL.md): Student's t distribution, the mean and its interval, paired
//! differences with their p-values, Holm's correction for a family of comparisons, and the two
//! one-sided tests (TOST) that a "matches" claim needs.
//!
//! The t distribution's CDF is `1 - I_x(df/2, 1/2) / 2` for `t > 0`, with `x = df / (df + t^2)`
//! and `I` the regularised incomplete beta function, evaluated by its continued fraction
//! (modified Lentz); `ln Gamma` by Lanczos' approximation (g = 7, 9 terms). Both are checked
//! against the closed forms at 1 and 2 degrees of freedom and against tabulated quantiles.

/// `ln Gamma(x)` for `x > 0` (Lanczos, g = 7; relative error below 1e-14 on the half-line).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The regularised incomplete beta function `I_x(a, b)` for `a, b > 0`, `0 <= x <= 1`.
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry
    // I_x(a, b) = 1 - I_{1-x}(b, a) on the other side.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// The continued fraction of `I_x(a, b)` by the modified Lentz method.
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        for numerator in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + numerator / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// `P(T <= t)` for Student's t with `df > 0` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
    if t > 0.0 { 1.0 - tail } else { tail }
}

/// The `p`-quantile of Student's t with `df` degrees of freedom (`0 < p < 1`), by bisection on
/// [`t_cdf`] to 1e-12.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if p == 0.5 {
        return 0.0;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while t_cdf(hi, df) < p {
        lo = hi;
        hi *= 2.0;
    }
    while hi - lo > 1e-12 * hi.max(1.0) {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The mean of independent values (one per seed) and the half-width of its two-sided t-interval
/// at `level` (0.95 for a 95% interval); NaN half-width below 2 values.
pub fn mean_interval(values: &[f64], level: f64) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::NAN);
    }
    (
        mean,
        t_quantile(0.5 + level / 2.0, n - 1.0) * standard_error(values, mean),
    )
}

fn standard_error(values: &[f64], mean: f64) -> f64 {
    let n = values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (var / n).sqrt()
}

/// A paired comparison over seeds: the differences' mean, its 95% interval and the two-sided
/// p-value of "the mean difference is 0" (one-sample t-test on the differences).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedTest {
    pub mean: f64,
    pub ci95: f64,
    pub p_value: f64,
}

/// The paired t-test of `differences` (one per seed). With all differences equal the p-value is
/// 0 for a non-zero difference and 1 for none; below 2 seeds everything but the mean is NaN.
pub fn paired_test(differences: &[f64]) -> PairedTest {
    let (mean, ci95) = mean_interval(differences, 0.95);
    if differences.len() < 2 {
        return PairedTest {
            mean,
            ci95,
            p_value: f64::NAN,
        };
    }
    let se = standard_error(differences, mean);
    let df = differences.len() as f64 - 1.0;
    let p_value = if se == 0.0 {
        if mean == 0.0 { 1.0 } else { 0.0 }
    } else {
        2.0 * t_cdf(-(mean / se).abs(), df)
    };
    PairedTest { mean, ci95, p_value }
}

/// Holm's step-down adjusted p-values of a family of tests, in the input order: sorted
/// ascending, the i-th (from 0) is scaled by `m - i`, made non-decreasing, and capped at 1.
/// Rejecting where the adjusted value is below alpha controls the family-wise error at alpha.
/// A NaN p-value stays NaN and counts as a test of the family.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).filter(|&i| !p_values[i].is_nan()).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![f64::NAN; m];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p_values[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// The p-value of the two one-sided tests (TOST) that the mean difference lies inside
/// `(-margin, margin)`: the larger of the one-sided p-values of "mean <= -margin" and
/// "mean >= margin". Below alpha, the difference is equivalent to 0 within the margin; this is
/// the same as the (1 - 2 alpha) t-interval lying inside the margin.
pub fn equivalence_p_value(differences: &[f64], margin: f64) -> f64 {
    let n = differences.len();
    if n < 2 || margin.is_nan() || margin <= 0.0 {
        return f64::NAN;
    }
    let mean = differences.iter().sum::<f64>() / n as f64;
    let se = standard_error(differences, mean);
    if se == 0.0 {
        return if mean.abs() < margin { 0.0 } else { 1.0 };
    }
    let df = n as f64 - 1.0;
    let above_lower = 1.0 - t_cdf((mean + margin) / se, df);
    let below_upper = t_cdf((mean - margin) / se, df);
    above_lower.max(below_upper)
}

/// The verdict of one comparison in a family, from its Holm-adjusted p-values at level `alpha`:
/// an equivalence within the stated margin, a difference, or neither. Equivalence comes first:
/// a difference that is significant but shown to lie inside the margin is negligible by the
/// margin stated before the run, so it is reported as a match, not as a win or a loss; but it is
/// a verdict of its own, so that a table says the difference is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Differs,
    Equivalent,
    /// Both tests hold: a real difference, smaller than the margin.
    EquivalentYetDiffers,
    Inconclusive,
}

impl Verdict {
    pub fn of(adjusted_difference_p: f64, adjusted_equivalence_p: f64, alpha: f64) -> Self {
        if adjusted_equivalence_p < alpha && adjusted_difference_p < alpha {
            Verdict::EquivalentYetDiffers
        } else if adjusted_equivalence_p < alpha {
            Verdict::Equivalent
        } else if adjusted_difference_p < alpha {
            Verdict::Differs
        } else {
            Verdict::Inconclusive
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Differs => "differs",
            Verdict::Equivalent => "equivalent within the margin",
            Verdict::EquivalentYetDiffers => "equivalent within the margin, yet differs inside it",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// Whether the equivalence test holds (a match, whether or not a difference inside the margin
    /// is significant too).
    pub fn is_equivalent(self) -> bool {
        matches!(self, Verdict::Equivalent | Verdict::EquivalentYetDiffers)
    }
}

/// One comparison of a family: the paired differences' mean and 95% half-width, the Holm-adjusted
/// p-values of the difference and equivalence tests, and the verdict at the family's alpha.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub mean: f64,
    pub ci95: f64,
    pub margin: f64,
    pub holm: f64,
    pub equivalence_holm: f64,
    pub verdict: Verdict,
}

/// A family of paired comparisons, each given as its per-seed differences and its equivalence
/// margin: paired t-tests and TOST, each Holm-adjusted over the family, and the verdicts at `alpha`.
pub fn compare_family(differences: &[Vec<f64>], margins: &[f64], alpha: f64) -> Vec<Comparison> {
    let tests: Vec<PairedTest> = differences.iter().map(|d| paired_test(d)).collect();
    let holm_p = holm(&tests.iter().map(|t| t.p_value).collect::<Vec<_>>());
    let equivalence = holm(
        &differences
            .iter()
            .zip(margins)
            .map(|(d, &m)| equivalence_p_value(d, m))
            .collect::<Vec<_>>(),
    );
    (0..differences.len())
        .map(|k| Comparison {
            mean: tests[k].mean,
            ci95: tests[k].ci95,
            margin: margins[k],
            holm: holm_p[k],
            equivalence_holm: equivalence[k],
            verdict: Verdict::of(holm_p[k], equivalence[k], alpha),
        })
        .collect()
}

/// The `p`-quantile of the Beta(a, b) distribution, by bisection on [`incomplete_beta`] to 1e-14.
pub fn beta_quantile(p: f64, a: f64, b: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1.0);
    while hi - lo > 1e-14 {
        let mid = 0.5 * (lo + hi);
        if incomplete_beta(a, b, mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The Clopper-Pearson (exact binomial) interval at `level` for a proportion of `k` successes in
/// `n` trials: the `alpha/2` quantile of Beta(k, n - k + 1) and the `1 - alpha/2` quantile of
/// Beta(k + 1, n - k), with 0 and 1 at the ends.
pub fn clopper_pearson(k: usize, n: usize, level: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let alpha = 1.0 - level;
    let (k, n) = (k as f64, n as f64);
    let lo = if k == 0.0 {
        0.0
    } else {
        beta_quantile(alpha / 2.0, k, n - k + 1.0)
    };
    let hi = if k == n {
        1.0
    } else {
        beta_quantile(1.0 - alpha / 2.0, k + 1.0, n - k)
    };
    (lo, hi)
}
