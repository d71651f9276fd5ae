//! The digits data (docs/DIGITS.md): the loader, splits, standardisation and rotations on data
//! the tests build themselves; the few-shot episodes; and the softmax cross-entropy's first and
//! second derivatives (Candle, built from differentiable operations) against finite differences
//! and the closed form.

mod common;

use approx::assert_relative_eq;
use candle_core::{Device, Tensor};
use cml::autodiff::{gradients, hvp_and_mixed};
use cml::digits::{
    ClassPool, FewShotSplit, Labelled, META_TEST_DIGITS, META_TRAIN_DIGITS, Standardiser, load_digits,
    rotate, split,
};
use cml::linalg::{Vector, to_dvector, to_tensor};
use cml::mlp::softmax_cross_entropy;
use cml::rng::{normal_vector, seeded};
use common::central_difference;
use std::collections::HashSet;

/// 20 rows of 3 features: feature 0 is the row's id (so rows can be traced), feature 1 varies,
/// feature 2 is constant.
fn toy() -> Labelled {
    let x = (0..20)
        .flat_map(|i| [i as f64, (i * i % 7) as f64, 5.0])
        .collect();
    Labelled::new(3, x, (0..20).map(|i| i % 4).collect()).unwrap()
}

#[test]
fn a_split_has_the_asked_sizes_and_no_row_in_two_parts() {
    let data = toy();
    let s = split(&data, 10, 6, 3).unwrap();
    assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (10, 6, 4));
    let ids = |l: &Labelled| (0..l.len()).map(|i| l.row(i)[0] as usize).collect::<Vec<_>>();
    let (a, b, c) = (ids(&s.train), ids(&s.validation), ids(&s.test));
    let all: HashSet<usize> = a.iter().chain(&b).chain(&c).copied().collect();
    assert_eq!(all.len(), 20, "every row exactly once");
    // Each row keeps its label and features.
    for part in [&s.train, &s.validation, &s.test] {
        for i in 0..part.len() {
            let id = part.row(i)[0] as usize;
            assert_eq!(part.labels[i], id % 4);
            assert_eq!(part.row(i), data.row(id));
        }
    }
    // The same seed, the same split; another seed, another.
    assert_eq!(split(&data, 10, 6, 3).unwrap(), s);
    assert_ne!(ids(&split(&data, 10, 6, 4).unwrap().train), a);
    assert!(split(&data, 10, 10, 3).is_err(), "no test rows left");
    assert!(split(&data, 0, 5, 3).is_err());
}

#[test]
fn standardisation_is_fitted_on_the_training_part_only() {
    let s = split(&toy(), 12, 4, 1).unwrap();
    let st = Standardiser::fit(&s.train).unwrap();
    let train = st.apply(&s.train);
    for f in 0..2 {
        let col: Vec<f64> = (0..train.len()).map(|i| train.row(i)[f]).collect();
        let mean = col.iter().sum::<f64>() / col.len() as f64;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
        assert!(mean.abs() < 1e-12, "feature {f}: mean {mean}");
        assert_relative_eq!(var, 1.0, max_relative = 1e-12);
    }
    // The constant feature keeps scale 1 (no division by 0) and becomes 0.
    assert_eq!(st.scale[2], 1.0);
    assert!((0..train.len()).all(|i| train.row(i)[2] == 0.0));
    // A test row is mapped with the training statistics: id 0 - mean of the training ids.
    let train_ids: Vec<f64> = (0..s.train.len()).map(|i| s.train.row(i)[0]).collect();
    let m = train_ids.iter().sum::<f64>() / 12.0;
    let sd = (train_ids.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 12.0).sqrt();
    let test = st.apply(&s.test);
    for i in 0..test.len() {
        assert_relative_eq!(test.row(i)[0], (s.test.row(i)[0] - m) / sd, max_relative = 1e-12);
    }
}

#[test]
fn rotations_turn_images_counter_clockwise() {
    // [a b; c d] turned 90 degrees counter-clockwise is [b d; a c].
    assert_eq!(rotate(&[1.0, 2.0, 3.0, 4.0], 2, 1), vec![2.0, 4.0, 1.0, 3.0]);
    // 180 degrees reverses the pixel order.
    let img: Vec<f64> = (0..9).map(f64::from).collect();
    let mut rev = img.clone();
    rev.reverse();
    assert_eq!(rotate(&img, 3, 2), rev);
    assert_eq!(rotate(&img, 3, 4), img);
    assert_eq!(rotate(&rotate(&img, 3, 1), 3, 3), img);
}

#[test]
fn the_shipped_digits_have_the_documented_shape() {
    // The UCI set as documented: 1797 images of 64 pixels 0-16, about 180 per digit.
    let d = load_digits().unwrap();
    assert_eq!((d.len(), d.features), (1797, 64));
    assert_eq!(d.len(), cml::digits::IMAGES);
    assert!(d.x.iter().all(|&v| (0.0..=16.0).contains(&v) && v.fract() == 0.0));
    for digit in 0..10 {
        let n = d.labels.iter().filter(|&&l| l == digit).count();
        assert!((170..=190).contains(&n), "digit {digit}: {n} images");
    }
}

#[test]
fn episodes_draw_distinct_classes_and_images() {
    let d = load_digits().unwrap();
    let train = ClassPool::new(&d, &META_TRAIN_DIGITS).unwrap();
    let test = ClassPool::upright(&d, &META_TEST_DIGITS).unwrap();
    // 5 digits x 4 rotations for meta-training, 5 upright digits for meta-test.
    assert_eq!((train.classes.len(), test.classes.len()), (20, 5));
    let digits = |p: &ClassPool| p.classes.iter().map(|c| c.0).collect::<HashSet<_>>();
    assert!(
        digits(&train).is_disjoint(&digits(&test)),
        "meta-train and meta-test digits disjoint"
    );
    // No meta-test class is a rotation of another class: meta-test classes are upright, and a
    // 6 turned half way (a 9) stays on the meta-training side with the 9.
    assert!(test.classes.iter().all(|&(_, turns)| turns == 0));
    assert!(digits(&train).contains(&6) && digits(&train).contains(&9));
    let mut rng = seeded(4);
    let e = test.episode(&mut rng, 5, 3, 15).unwrap();
    assert_eq!((e.support.len(), e.query.len()), (15, 75));
    for label in 0..5 {
        assert_eq!(e.support.labels.iter().filter(|&&l| l == label).count(), 3);
        assert_eq!(e.query.labels.iter().filter(|&&l| l == label).count(), 15);
    }
    assert!(
        e.support
            .x
            .iter()
            .chain(&e.query.x)
            .all(|v| (0.0..=1.0).contains(v))
    );
    // No image is both a support and a query image of its class.
    let key = |l: &Labelled, i: usize| {
        (
            l.labels[i],
            l.row(i).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        )
    };
    let s: HashSet<_> = (0..e.support.len()).map(|i| key(&e.support, i)).collect();
    assert!((0..e.query.len()).all(|i| !s.contains(&key(&e.query, i))));
    assert!(
        test.episode(&mut rng, 13, 1, 1).is_err(),
        "more ways than classes"
    );
}

#[test]
fn the_few_shot_pools_share_no_class_shape_or_image() {
    let d = load_digits().unwrap();
    let s = FewShotSplit::new(&d).unwrap();
    // Validation: 0, 1 and 6 turned a quarter, 2 turned a quarter and three quarters. Each shape
    // leaves meta-training with its look-alikes: 0 and 1 look the same turned half way (so 0 and 1
    // at three quarters go), a 6 at a quarter is a 9 at three quarters. 20 - 8 = 12 classes stay.
    assert_eq!(s.validation.classes, vec![(0, 1), (1, 1), (2, 1), (2, 3), (6, 1)]);
    assert_eq!(
        s.meta_train.classes,
        vec![
            (0, 0),
            (0, 2),
            (1, 0),
            (1, 2),
            (2, 0),
            (2, 2),
            (6, 0),
            (6, 2),
            (6, 3),
            (9, 0),
            (9, 1),
            (9, 2)
        ]
    );
    assert_eq!(s.meta_test.classes, vec![(3, 0), (4, 0), (5, 0), (7, 0), (8, 0)]);
    // No image, in any rotation, is in two pools: each image is keyed by the least of its four
    // rotations' pixels, so an image and its turned copies share one key.
    let keys = |p: &ClassPool| -> HashSet<Vec<u64>> {
        p.rows
            .iter()
            .flatten()
            .map(|&i| {
                (0..4)
                    .map(|t| {
                        rotate(d.row(i), 8, t)
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>()
                    })
                    .min()
                    .unwrap()
            })
            .collect()
    };
    let (train, validation, test) = (keys(&s.meta_train), keys(&s.validation), keys(&s.meta_test));
    assert!(train.is_disjoint(&validation) && train.is_disjoint(&test) && validation.is_disjoint(&test));
    // About a third of each meta-training-side digit's images are validation images, enough for
    // a 5-shot episode with 15 queries; each validation class of a digit has the same images.
    for (k, &(digit, _)) in s.validation.classes.iter().enumerate() {
        let all = d.labels.iter().filter(|&&l| l == digit).count();
        let held = s.validation.rows[k].len();
        assert!(
            held >= 20 && (held as f64 - all as f64 / 3.0).abs() <= 1.0,
            "{digit}: {held} of {all}"
        );
        for (j, &(other, _)) in s.meta_train.classes.iter().enumerate() {
            if other == digit {
                assert_eq!(s.meta_train.rows[j].len() + held, all);
            }
        }
    }
    let mut rng = seeded(5);
    let e = s.validation.episode(&mut rng, 5, 5, 15).unwrap();
    assert_eq!((e.support.len(), e.query.len()), (25, 75));
}

#[test]
fn the_per_image_cross_entropies_are_the_rows_of_the_mean() {
    // Zero weights and biases give equal logits for every class, so each row's cross-entropy is
    // ln(4) for the toy's 4 classes, whatever the row. With random weights, row i's entry is the
    // mean cross-entropy of a part holding row i alone, and the entries' mean is the part's.
    use cml::digits::decay_classifier::Part;
    let net = cml::mlp::Mlp::parse("3-5-4").unwrap();
    let data = toy();
    let part = Part::new(data.clone(), 4).unwrap();
    let zero = to_tensor(&Vector::zeros(net.param_count())).unwrap();
    for ce in part.cross_entropies(&net, &zero).unwrap() {
        assert_relative_eq!(ce, 4f64.ln(), max_relative = 1e-14);
    }
    let phi = to_tensor(&normal_vector(&mut seeded(3), net.param_count())).unwrap();
    let rows = part.cross_entropies(&net, &phi).unwrap();
    assert_eq!(rows.len(), 20);
    for (i, &ce) in rows.iter().enumerate() {
        let alone = Part::new(data.select(&[i]), 4)
            .unwrap()
            .cross_entropy(&net, &phi)
            .unwrap();
        assert_relative_eq!(ce, alone.to_scalar::<f64>().unwrap(), max_relative = 1e-12);
    }
    let mean = part
        .cross_entropy(&net, &phi)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert_relative_eq!(rows.iter().sum::<f64>() / 20.0, mean, max_relative = 1e-12);
}

/// `f(z) = softmax_cross_entropy(z, t)` on `n x c` logits `z` (the phi argument), one-hot `t`.
fn cross_entropy_fn(
    n: usize,
    c: usize,
    labels: Vec<usize>,
) -> impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> {
    let mut t = vec![0.0; n * c];
    for (i, l) in labels.iter().enumerate() {
        t[i * c + l] = 1.0;
    }
    let t = Tensor::from_vec(t, (n, c), &Device::Cpu).unwrap();
    move |z: &Tensor, _theta: &Tensor| softmax_cross_entropy(&z.reshape((n, c))?, &t)
}

#[test]
fn the_cross_entropy_has_the_right_first_and_second_derivatives() {
    // Closed form, per row i of N: d/dz_i = (p_i - t_i) / N and d2/dz_i^2 = (diag p_i - p_i p_i^T) / N
    // with p_i = softmax(z_i); rows do not interact.
    let (n, c) = (3, 4);
    let labels = vec![2, 0, 3];
    let f = cross_entropy_fn(n, c, labels.clone());
    let theta = Tensor::zeros(1, candle_core::DType::F64, &Device::Cpu).unwrap();
    for (scale, seed) in [(1.0, 1), (30.0, 2)] {
        // scale 30: logits far apart, where a naive exp would lose all precision.
        let z = normal_vector(&mut seeded(seed), n * c) * scale;
        let zt = to_tensor(&z).unwrap();
        let g = gradients(&f, &zt, &theta).unwrap();
        let p: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let row = &z.as_slice()[i * c..(i + 1) * c];
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            })
            .collect();
        let closed = Vector::from_fn(n * c, |k, _| {
            let (i, j) = (k / c, k % c);
            (p[i][j] - f64::from(u8::from(labels[i] == j))) / n as f64
        });
        let grad = to_dvector(&g.phi).unwrap();
        assert!(
            (&grad - &closed).amax() < 1e-14,
            "gradient vs closed form at scale {scale}"
        );
        // The loss value: mean of logsumexp(z_i) - z_i[label].
        let loss: f64 = (0..n)
            .map(|i| {
                let row = &z.as_slice()[i * c..(i + 1) * c];
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - row[labels[i]]
            })
            .sum::<f64>()
            / n as f64;
        assert_relative_eq!(g.loss, loss, max_relative = 1e-14);
        let loss_at = |x: &Vector| gradients(&f, &to_tensor(x).unwrap(), &theta).unwrap().loss;
        let fd = central_difference(loss_at, &z, 1e-6);
        assert!(
            (&grad - &fd).amax() < 1e-8,
            "gradient vs finite differences at scale {scale}"
        );

        // Second order: Hessian-vector product by double backward, against the closed form
        // and against central differences of the gradient.
        let v = normal_vector(&mut seeded(seed + 10), n * c);
        let (hv, _) = hvp_and_mixed(&f, &zt, &theta, &to_tensor(&v).unwrap()).unwrap();
        let hv = to_dvector(&hv).unwrap();
        let closed_hv = Vector::from_fn(n * c, |k, _| {
            let (i, j) = (k / c, k % c);
            let pv: f64 = (0..c).map(|l| p[i][l] * v[i * c + l]).sum();
            p[i][j] * (v[k] - pv) / n as f64
        });
        assert!(
            (&hv - &closed_hv).amax() < 1e-14,
            "Hessian-vector product vs closed form at scale {scale}"
        );
        let h = 1e-5;
        let grad_at =
            |x: &Vector| to_dvector(&gradients(&f, &to_tensor(x).unwrap(), &theta).unwrap().phi).unwrap();
        let fd_hv = (grad_at(&(&z + &v * h)) - grad_at(&(&z - &v * h))) / (2.0 * h);
        assert!(
            (&hv - &fd_hv).amax() < 1e-8,
            "Hessian-vector product vs finite differences at scale {scale}"
        );
    }
}

#[test]
fn the_contrastive_weight_decay_estimate_matches_the_exact_implicit_meta_gradient() {
    // Softmax regression (a 4-3 network, no hidden layer: the cross-entropy is convex in the
    // weights) on 12 training and 8 validation rows with decay strengths around e^-2: the inner
    // loss is strongly convex, so the free phase and Newton find the same solution, and the symmetric estimate with converged phases has an
    // O(beta^2) error (docs/MATH.md §2).
    use cml::digits::DecayClassifier;
    use cml::estimator::{Contrastive, MetaGradientEstimator, Variant};
    use cml::ground_truth::exact_meta_gradient;
    use cml::inner::GdParams;
    use cml::linalg::relative_error;
    use cml::mlp::Mlp;
    use cml::problem::ProblemInstance;
    let mut rng = seeded(8);
    let mut part = |n: usize| {
        let x = normal_vector(&mut rng, n * 4).as_slice().to_vec();
        Labelled::new(4, x, (0..n).map(|i| i % 3).collect()).unwrap()
    };
    let (train, validation) = (part(12), part(8));
    let net = Mlp::parse("4-3").unwrap();
    let phi_init = net.init(&mut seeded(9));
    let theta = normal_vector(&mut seeded(10), net.param_count()).map(|t| 0.3 * t - 2.0);
    let p = DecayClassifier::new(net, train, validation, &phi_init, &theta).unwrap();
    let exact = exact_meta_gradient(&p, p.theta()).unwrap().meta_gradient;
    let converged = GdParams {
        max_steps: 200_000,
        tolerance: 1e-11,
        ..GdParams::default()
    };
    let err = |beta: f64| {
        let e = Contrastive {
            variant: Variant::Symmetric,
            beta,
            free: converged,
            nudged: converged,
        }
        .estimate(&p, p.theta())
        .unwrap();
        relative_error(&e.gradient, &exact)
    };
    let (fine, coarse) = (err(1e-3), err(1e-2));
    assert!(exact.norm() > 1e-3, "meta-gradient norm {:.2e}", exact.norm());
    assert!(fine < 1e-4, "relative error {fine:.2e} at beta = 1e-3");
    assert!(
        coarse > 30.0 * fine,
        "O(beta^2): {coarse:.2e} at 1e-2, {fine:.2e} at 1e-3"
    );
}
