//! The statistics every comparison of the write-up rests on, against closed forms and tables:
//! Student's t at 1 and 2 degrees of freedom has a closed-form CDF, its 0.975 quantiles are
//! tabulated, and Holm's correction and the two one-sided tests have textbook cases.

use approx::assert_relative_eq;
use cml::stats::{
    Verdict, equivalence_p_value, holm, incomplete_beta, ln_gamma, mean_interval, paired_test, t_cdf,
    t_quantile,
};

/// df = 1 is the Cauchy distribution: 1/2 + atan(t) / pi.
fn cauchy_cdf(t: f64) -> f64 {
    0.5 + t.atan() / std::f64::consts::PI
}

/// df = 2: 1/2 + t / (2 sqrt(2 + t^2)).
fn t2_cdf(t: f64) -> f64 {
    0.5 + t / (2.0 * (2.0 + t * t).sqrt())
}

#[test]
fn the_t_cdf_matches_its_closed_forms_at_one_and_two_degrees_of_freedom() {
    for t in [-30.0, -4.0, -1.5, -0.3, 0.0, 0.2, 1.0, 2.5, 7.0, 100.0] {
        assert_relative_eq!(t_cdf(t, 1.0), cauchy_cdf(t), max_relative = 1e-12);
        assert_relative_eq!(t_cdf(t, 2.0), t2_cdf(t), max_relative = 1e-12);
    }
}

#[test]
fn ln_gamma_and_the_incomplete_beta_match_closed_forms() {
    // Gamma(5) = 4! = 24, Gamma(1/2) = sqrt(pi), Gamma(10.5) = (19!! / 2^10) sqrt(pi).
    assert_relative_eq!(ln_gamma(5.0), 24f64.ln(), max_relative = 1e-13);
    assert_relative_eq!(
        ln_gamma(0.5),
        std::f64::consts::PI.sqrt().ln(),
        max_relative = 1e-13
    );
    let double_factorial_19: f64 = (1..=19).step_by(2).map(|k| k as f64).product();
    let gamma_10_5 = double_factorial_19 / 1024.0 * std::f64::consts::PI.sqrt();
    assert_relative_eq!(ln_gamma(10.5), gamma_10_5.ln(), max_relative = 1e-13);
    // I_x(a, 1) = x^a and I_x(1, b) = 1 - (1 - x)^b.
    for x in [0.01, 0.3, 0.5, 0.77, 0.99] {
        assert_relative_eq!(incomplete_beta(2.5, 1.0, x), x.powf(2.5), max_relative = 1e-12);
        assert_relative_eq!(
            incomplete_beta(1.0, 3.5, x),
            1.0 - (1.0 - x).powf(3.5),
            max_relative = 1e-12
        );
    }
}

#[test]
fn the_t_quantiles_match_the_published_table() {
    // t(0.975, df), df = 1..10, 20, 30, 120 as every statistics table prints them (3 decimals).
    let table = [
        (1.0, 12.706),
        (2.0, 4.303),
        (3.0, 3.182),
        (4.0, 2.776),
        (5.0, 2.571),
        (6.0, 2.447),
        (7.0, 2.365),
        (8.0, 2.306),
        (9.0, 2.262),
        (10.0, 2.228),
        (20.0, 2.086),
        (30.0, 2.042),
        (120.0, 1.980),
    ];
    for (df, t) in table {
        assert!(
            (t_quantile(0.975, df) - t).abs() < 6e-4,
            "df {df}: {}",
            t_quantile(0.975, df)
        );
    }
    // The closed-form quantile at df = 1: tan(pi (p - 1/2)).
    for p in [0.6, 0.9, 0.95, 0.999] {
        let exact = (std::f64::consts::PI * (p - 0.5)).tan();
        assert_relative_eq!(t_quantile(p, 1.0), exact, max_relative = 1e-9);
        assert_relative_eq!(t_quantile(1.0 - p, 1.0), -exact, max_relative = 1e-9);
    }
}

#[test]
fn a_paired_test_on_three_seeds_has_the_closed_form_p_value() {
    // Differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3) at df = 2, so the two-sided
    // p-value is 2 (1 - F(t)) = 1 - t / sqrt(2 + t^2).
    let test = paired_test(&[1.0, 2.0, 3.0]);
    let t = 2.0 * 3f64.sqrt();
    assert_relative_eq!(test.mean, 2.0, max_relative = 1e-15);
    assert_relative_eq!(test.p_value, 1.0 - t / (2.0 + t * t).sqrt(), max_relative = 1e-10);
    // The 95% half-width: t(0.975, 2) = 4.303 (table) x se.
    assert!((test.ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-3, "{}", test.ci95);
    let (mean, half) = mean_interval(&[1.0, 2.0, 3.0], 0.95);
    assert_eq!((mean, half), (test.mean, test.ci95));
    // Equal differences: no spread, so 0 when they are not 0 and 1 when they are.
    assert_eq!(paired_test(&[0.5, 0.5, 0.5]).p_value, 0.0);
    assert_eq!(paired_test(&[0.0, 0.0]).p_value, 1.0);
    assert!(paired_test(&[1.0]).p_value.is_nan());
}

#[test]
fn holm_adjusts_a_textbook_family() {
    // p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03,
    // 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06 (step-down is monotone).
    let adjusted = holm(&[0.01, 0.04, 0.03, 0.005]);
    let expected = [0.03, 0.06, 0.06, 0.02];
    for (a, e) in adjusted.iter().zip(expected) {
        assert_relative_eq!(*a, e, max_relative = 1e-12);
    }
    // Capped at 1; a NaN stays NaN but counts in m.
    let adjusted = holm(&[0.6, f64::NAN, 0.2]);
    assert_relative_eq!(adjusted[2], 0.6, max_relative = 1e-12);
    assert_relative_eq!(adjusted[0], 1.0, max_relative = 1e-12);
    assert!(adjusted[1].is_nan());
}

#[test]
fn tost_has_the_closed_form_at_two_degrees_of_freedom_and_agrees_with_the_interval() {
    // Differences 1, 2, 3 (mean 2, se 1/sqrt(3)), margin 5: the larger one-sided p-value is
    // F((2 - 5) / se) = F(-3 sqrt(3)) at df = 2.
    let p = equivalence_p_value(&[1.0, 2.0, 3.0], 5.0);
    assert_relative_eq!(p, t2_cdf(-3.0 * 3f64.sqrt()), max_relative = 1e-10);
    // Two paths that must agree: TOST at alpha = 0.05 rejects exactly when the 90% interval
    // lies inside (-margin, margin).
    let mut state = 12345u64;
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut both = [0usize; 2];
    for case in 0..400 {
        let n = 3 + case % 6;
        let shift = 2.0 * uniform() - 1.0;
        let d: Vec<f64> = (0..n).map(|_| shift + 0.5 * (uniform() - 0.5)).collect();
        let margin = 0.2 + uniform();
        let (mean, half90) = mean_interval(&d, 0.90);
        let inside = mean - half90 > -margin && mean + half90 < margin;
        let tost = equivalence_p_value(&d, margin) < 0.05;
        assert_eq!(inside, tost, "case {case}: {d:?} margin {margin}");
        both[usize::from(tost)] += 1;
    }
    // Both outcomes occur, so the agreement is not vacuous.
    assert!(both[0] > 20 && both[1] > 20, "{both:?}");
}

#[test]
fn a_verdict_needs_a_corrected_difference_or_a_corrected_equivalence() {
    assert_eq!(Verdict::of(0.01, 0.9, 0.05), Verdict::Differs);
    assert_eq!(Verdict::of(0.2, 0.01, 0.05), Verdict::Equivalent);
    // Significant but inside the margin: a match, not a win, that says the difference is there.
    assert_eq!(Verdict::of(0.01, 0.01, 0.05), Verdict::EquivalentYetDiffers);
    assert!(Verdict::EquivalentYetDiffers.is_equivalent() && Verdict::Equivalent.is_equivalent());
    assert!(!Verdict::Differs.is_equivalent() && !Verdict::Inconclusive.is_equivalent());
    assert_eq!(Verdict::of(0.2, 0.2, 0.05), Verdict::Inconclusive);
    assert_eq!(Verdict::of(f64::NAN, f64::NAN, 0.05), Verdict::Inconclusive);
}

#[test]
fn clopper_pearson_has_its_closed_forms_at_the_ends_and_is_symmetric() {
    use cml::stats::clopper_pearson;
    // All n covered: the lower end solves p^n = alpha/2, so it is (alpha/2)^(1/n); none covered:
    // the upper end is 1 - (alpha/2)^(1/n).
    for n in [1usize, 5, 20, 100] {
        let end = 0.025f64.powf(1.0 / n as f64);
        let (lo, hi) = clopper_pearson(n, n, 0.95);
        assert_relative_eq!(lo, end, max_relative = 1e-10);
        assert_eq!(hi, 1.0);
        let (lo, hi) = clopper_pearson(0, n, 0.95);
        assert_eq!(lo, 0.0);
        assert_relative_eq!(hi, 1.0 - end, max_relative = 1e-10);
    }
    // k of n and n - k of n mirror each other; the interval of 19 of 20 contains 0.95, and its
    // upper end, 0.975^(1/20) = 0.99873 (the mirror of the k = 1 lower end below), is below 0.999.
    let (lo, hi) = clopper_pearson(19, 20, 0.95);
    let (mlo, mhi) = clopper_pearson(1, 20, 0.95);
    assert_relative_eq!(lo, 1.0 - mhi, max_relative = 1e-10);
    assert_relative_eq!(hi, 1.0 - mlo, max_relative = 1e-10);
    assert!(lo < 0.95 && 0.95 < hi && hi < 0.999, "({lo}, {hi})");
    // k = 1 of n: the lower end solves 1 - (1 - p)^n = alpha/2, so it is 1 - (1 - alpha/2)^(1/n).
    assert_relative_eq!(mlo, 1.0 - 0.975f64.powf(1.0 / 20.0), max_relative = 1e-10);
}
