//! Few-shot classification episodes in the Omniglot protocol (docs/DIGITS.md §3): classes are
//! (digit, rotation) pairs, four rotations per digit; an N-way K-shot episode draws N classes,
//! K support and Q query images of each, and relabels the classes 0..N-1 in the order drawn.
//! The loss is the softmax cross-entropy of the network's N logits.

use super::data::{Labelled, rotate};
use crate::engine::mlp_kernel::MlpKernel;
use crate::error::{CmlError, Result};
use crate::mlp::Mlp;
use crate::problem::instance::InstanceReader;
use crate::problem::{InstanceFile, SupervisedTask, TaskTensors};
use crate::rng::Rng;
use candle_core::Tensor;
use rand::seq::index::sample;

/// Pixels per side of a digit image.
pub const SIDE: usize = 8;
/// The largest pixel value; images are divided by it, so pixels lie in [0, 1].
pub const MAX_PIXEL: f64 = 16.0;

/// The few-shot split (docs/DIGITS.md §3). Meta-test classes are upright digits; rotation is
/// augmentation of the meta-training digits only, as in the paper's code. A 6 turned half way is
/// a 9, so both sit on the meta-training side: no meta-test class is a rotation of a
/// meta-training class or of another meta-test class. Five meta-test digits make the 5-way
/// meta-test episodes (every episode holds all five, in a random label order).
pub const META_TRAIN_DIGITS: [usize; 5] = [0, 1, 2, 6, 9];
pub const META_TEST_DIGITS: [usize; 5] = [3, 4, 5, 7, 8];

/// The validation classes, `(digit, quarter turns)`, on which the few-shot job makes its choices:
/// turned meta-training-side digits, five for 5-way episodes. Meta-training keeps no class of the
/// same shape ([`same_shape`]) and none of their images ([`FewShotSplit`]).
pub const VALIDATION_CLASSES: [(usize, usize); 5] = [(0, 1), (1, 1), (2, 1), (2, 3), (6, 1)];

/// One in this many images of each meta-training-side digit is held out for the validation
/// classes (about 60 of 180: enough for 5 support and 15 query images).
pub const VALIDATION_IMAGE_SHARE: usize = 3;

/// Whether two `(digit, quarter turns)` classes show the same shape: the same class; a 0, 1 or 8
/// and itself turned half way (the three digits that look alike upside down); a 6 and a 9 turned
/// half way.
pub fn same_shape(a: (usize, usize), b: (usize, usize)) -> bool {
    let half_turned = (a.1 + 2) % 4 == b.1;
    let alike_upside_down =
        (a.0 == b.0 && [0, 1, 8].contains(&a.0)) || (a.0, b.0) == (6, 9) || (a.0, b.0) == (9, 6);
    a == b || (alike_upside_down && half_turned)
}

/// The few-shot job's three disjoint pools: meta-training, validation and meta-test classes. No
/// two pools share a class, a shape ([`same_shape`]) or an image: each meta-training-side digit's
/// images are cut once, by a fixed shuffle, into meta-training and validation images.
#[derive(Debug, Clone)]
pub struct FewShotSplit {
    pub meta_train: ClassPool,
    pub validation: ClassPool,
    pub meta_test: ClassPool,
}

/// The seed of the fixed image cut (not a run's seed: every run sees the same pools).
const IMAGE_CUT_SEED: u64 = 0x5eed_d161;

impl FewShotSplit {
    pub fn new(data: &Labelled) -> Result<Self> {
        let mut rng = crate::rng::seeded(IMAGE_CUT_SEED);
        let (mut train_rows, mut validation_rows) = (Vec::new(), Vec::new());
        for &d in &META_TRAIN_DIGITS {
            let rows = ClassPool::rows_of(data, d)?;
            let order = sample(&mut rng, rows.len(), rows.len()).into_vec();
            let (mut t, mut v): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
            for (k, &i) in order.iter().enumerate() {
                if k % VALIDATION_IMAGE_SHARE == 0 {
                    &mut v
                } else {
                    &mut t
                }
                .push(rows[i]);
            }
            t.sort_unstable();
            v.sort_unstable();
            train_rows.push((d, t));
            validation_rows.push((d, v));
        }
        let rows_of = |cut: &[(usize, Vec<usize>)], d: usize| {
            cut.iter()
                .find(|(x, _)| *x == d)
                .map(|(_, r)| r.clone())
                .expect("a meta-training digit")
        };
        let meta_train: Vec<_> = META_TRAIN_DIGITS
            .iter()
            .flat_map(|&d| (0..4).map(move |t| (d, t)))
            .filter(|&c| !VALIDATION_CLASSES.iter().any(|&v| same_shape(c, v)))
            .map(|c| (c, rows_of(&train_rows, c.0)))
            .collect();
        let validation: Vec<_> = VALIDATION_CLASSES
            .iter()
            .map(|&c| (c, rows_of(&validation_rows, c.0)))
            .collect();
        Ok(FewShotSplit {
            meta_train: ClassPool::from_rows(data, &meta_train)?,
            validation: ClassPool::from_rows(data, &validation)?,
            meta_test: ClassPool::upright(data, &META_TEST_DIGITS)?,
        })
    }
}

/// The classes an episode can draw from, each with its images.
#[derive(Debug, Clone)]
pub struct ClassPool {
    /// `(digit, quarter turns)` of each class.
    pub classes: Vec<(usize, usize)>,
    /// The data rows of each class's images.
    pub rows: Vec<Vec<usize>>,
    images: Vec<Vec<Vec<f64>>>,
}

impl ClassPool {
    /// Every rotation (0, 90, 180, 270 degrees) of each of `digits`, from `data`'s images.
    pub fn new(data: &Labelled, digits: &[usize]) -> Result<Self> {
        Self::with_turns(data, digits, &[0, 1, 2, 3])
    }

    /// Each of `digits` upright only: one class per digit.
    pub fn upright(data: &Labelled, digits: &[usize]) -> Result<Self> {
        Self::with_turns(data, digits, &[0])
    }

    /// The rotations by `turns` quarter turns of each of `digits`, one class each, with all of the
    /// digit's images.
    fn with_turns(data: &Labelled, digits: &[usize], turns_of_each: &[usize]) -> Result<Self> {
        let mut classes = Vec::new();
        for &d in digits {
            let rows = Self::rows_of(data, d)?;
            classes.extend(turns_of_each.iter().map(|&t| ((d, t), rows.clone())));
        }
        Self::from_rows(data, &classes)
    }

    /// The data rows whose label is `digit`.
    fn rows_of(data: &Labelled, digit: usize) -> Result<Vec<usize>> {
        let rows: Vec<usize> = (0..data.len()).filter(|&i| data.labels[i] == digit).collect();
        if rows.is_empty() {
            return Err(CmlError::invalid("digit", digit, "a digit present in the data"));
        }
        Ok(rows)
    }

    /// One class per `((digit, quarter turns), rows)`: those rows' images, turned.
    fn from_rows(data: &Labelled, classes: &[((usize, usize), Vec<usize>)]) -> Result<Self> {
        if data.features != SIDE * SIDE {
            return Err(CmlError::invalid(
                "digit image size",
                data.features,
                "64 pixels (8 x 8)",
            ));
        }
        let images = classes
            .iter()
            .map(|((_, turns), rows)| {
                rows.iter()
                    .map(|&i| {
                        rotate(data.row(i), SIDE, *turns)
                            .into_iter()
                            .map(|v| v / MAX_PIXEL)
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Ok(ClassPool {
            classes: classes.iter().map(|c| c.0).collect(),
            rows: classes.iter().map(|c| c.1.clone()).collect(),
            images,
        })
    }

    /// An episode of `ways` classes with `shots` support and `queries` query images each.
    pub fn episode(&self, rng: &mut Rng, ways: usize, shots: usize, queries: usize) -> Result<Episode> {
        if ways < 2 || ways > self.classes.len() || shots == 0 || queries == 0 {
            return Err(CmlError::invalid(
                "episode",
                format!("{ways}-way {shots}-shot, {queries} queries"),
                format!(
                    "2 to {} ways, at least 1 shot and 1 query per class",
                    self.classes.len()
                ),
            ));
        }
        let chosen = sample(rng, self.classes.len(), ways).into_vec();
        let (mut support, mut query) = (Vec::new(), Vec::new());
        let (mut s_labels, mut q_labels) = (Vec::new(), Vec::new());
        for (label, &c) in chosen.iter().enumerate() {
            let pool = &self.images[c];
            if shots + queries > pool.len() {
                return Err(CmlError::invalid(
                    "images per class",
                    shots + queries,
                    format!("at most the {} images of class {:?}", pool.len(), self.classes[c]),
                ));
            }
            let picks = sample(rng, pool.len(), shots + queries).into_vec();
            for (k, &i) in picks.iter().enumerate() {
                if k < shots {
                    support.extend_from_slice(&pool[i]);
                    s_labels.push(label);
                } else {
                    query.extend_from_slice(&pool[i]);
                    q_labels.push(label);
                }
            }
        }
        Ok(Episode {
            ways,
            support: Labelled::new(SIDE * SIDE, support, s_labels)?,
            query: Labelled::new(SIDE * SIDE, query, q_labels)?,
        })
    }
}

/// One N-way episode: support images for the inner loss, query images for the outer loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub ways: usize,
    pub support: Labelled,
    pub query: Labelled,
}

/// The fraction of rows whose largest logit is at their label.
pub fn accuracy(logits: &Tensor, labels: &[usize]) -> Result<f64> {
    let rows = logits.to_vec2::<f64>()?;
    let correct = rows
        .iter()
        .zip(labels)
        .filter(|(row, l)| {
            let best = row.iter().enumerate().fold(
                (0, f64::NEG_INFINITY),
                |b, (j, &v)| if v > b.1 { (j, v) } else { b },
            );
            best.0 == **l
        })
        .count();
    Ok(correct as f64 / labels.len() as f64)
}

impl SupervisedTask for Episode {
    const SYNAPSE_NAME: &'static str = "digits-synapse";
    const MODULATION_NAME: &'static str = "digits-modulation";

    fn input_dim(&self) -> usize {
        SIDE * SIDE
    }

    fn output_dim(&self) -> usize {
        self.ways
    }

    fn tensors(&self) -> Result<TaskTensors> {
        let (xs, ys) = self.support.tensors(self.ways)?;
        let (xq, yq) = self.query.tensors(self.ways)?;
        Ok(TaskTensors {
            cross_entropy: true,
            x_support: xs,
            y_support: ys,
            mask_support: None,
            x_query: xq,
            y_query: yq,
            mask_query: None,
        })
    }

    /// Mean cross-entropy over the support rows (`L_in`) and the query rows (`L_out`).
    fn kernel(&self, net: &Mlp) -> MlpKernel {
        let all = self.support.concat(&self.query);
        MlpKernel::new(
            net,
            all.x.clone(),
            all.one_hot(self.ways),
            self.support.len(),
            1.0 / self.support.len() as f64,
            1.0 / self.query.len() as f64,
        )
        .with_cross_entropy()
    }

    fn push(&self, file: &mut InstanceFile) {
        file.push_scalar("ways", self.ways as f64);
        self.support.push(file, "support");
        self.query.push(file, "query");
    }

    fn read(r: &mut InstanceReader) -> Result<Self> {
        let ways = r.scalar("ways")?;
        if !(ways >= 2.0 && ways.fract() == 0.0 && ways <= 1e6) {
            return Err(r.error(format!("ways {ways} is not a whole number >= 2")));
        }
        let ways = ways as usize;
        let support = Labelled::read(r, "support", SIDE * SIDE, ways)?;
        let query = Labelled::read(r, "query", SIDE * SIDE, ways)?;
        if support.is_empty() || query.is_empty() {
            return Err(r.error("an episode needs support and query images".into()));
        }
        Ok(Episode { ways, support, query })
    }
}
