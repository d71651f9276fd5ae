//! The handwritten digits (docs/DIGITS.md §1): 1797 images of 8x8 pixels with values 0-16 and
//! labels 0-9, the UCI "Optical Recognition of Handwritten Digits" test set as shipped inside the
//! `smartcore` crate. Splits, standardisation and rotations work on any labelled rows, so tests
//! build their own small data.

use crate::error::{CmlError, Result};
use crate::linalg::Vector;
use crate::problem::InstanceFile;
use crate::problem::instance::InstanceReader;
use crate::rng::seeded;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;

/// Labelled rows: `x` is `len x features`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub features: usize,
    pub x: Vec<f64>,
    pub labels: Vec<usize>,
}

impl Labelled {
    /// Writes the rows into an instance file as `x_{part}` (row-major) and `labels_{part}`.
    pub fn push(&self, file: &mut InstanceFile, part: &str) {
        file.push_vector(&format!("x_{part}"), &Vector::from_vec(self.x.clone()));
        let labels = self.labels.iter().map(|&l| l as f64).collect();
        file.push_vector(&format!("labels_{part}"), &Vector::from_vec(labels));
    }

    /// Reads back what [`Labelled::push`] wrote: rows of `features` columns, labels below
    /// `classes`.
    pub fn read(r: &mut InstanceReader, part: &str, features: usize, classes: usize) -> Result<Self> {
        let labels = r.vector(&format!("labels_{part}"), None)?;
        let x = r.vector(&format!("x_{part}"), Some(labels.len() * features))?;
        let labels = labels
            .iter()
            .map(|&l| {
                if l >= 0.0 && l.fract() == 0.0 && l < classes as f64 {
                    Ok(l as usize)
                } else {
                    Err(r.error(format!(
                        "label {l} of {part} is not one of 0..{}",
                        classes.saturating_sub(1)
                    )))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Labelled::new(features, x.as_slice().to_vec(), labels)
    }

    pub fn new(features: usize, x: Vec<f64>, labels: Vec<usize>) -> Result<Self> {
        if features == 0 || x.len() != features * labels.len() {
            return Err(CmlError::invalid(
                "labelled data",
                format!(
                    "{} values for {} labels of {features} features",
                    x.len(),
                    labels.len()
                ),
                "one row of `features` values per label",
            ));
        }
        Ok(Labelled { features, x, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.features..(i + 1) * self.features]
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        Labelled {
            features: self.features,
            x: indices
                .iter()
                .flat_map(|&i| self.row(i).iter().copied())
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Rows of both, `self`'s first.
    pub fn concat(&self, other: &Labelled) -> Self {
        Labelled {
            features: self.features,
            x: self.x.iter().chain(&other.x).copied().collect(),
            labels: self.labels.iter().chain(&other.labels).copied().collect(),
        }
    }

    /// One-hot rows of `classes` columns.
    pub fn one_hot(&self, classes: usize) -> Vec<f64> {
        let mut t = vec![0.0; self.len() * classes];
        for (i, &l) in self.labels.iter().enumerate() {
            t[i * classes + l] = 1.0;
        }
        t
    }

    /// The rows as an `(N, features)` tensor and their one-hot labels as `(N, classes)`.
    pub fn tensors(&self, classes: usize) -> Result<(Tensor, Tensor)> {
        let dev = &Device::Cpu;
        Ok((
            Tensor::from_vec(self.x.clone(), (self.len(), self.features), dev)?,
            Tensor::from_vec(self.one_hot(classes), (self.len(), classes), dev)?,
        ))
    }
}

/// How many images [`load_digits`] gives (a test checks it against the data).
pub const IMAGES: usize = 1797;

/// The digits as shipped: 64 pixel values 0-16 per image, labels 0-9.
#[cfg(feature = "datasets")]
pub fn load_digits() -> Result<Labelled> {
    let d = smartcore::dataset::digits::load_dataset();
    let labels = d
        .target
        .iter()
        .map(|&t| {
            if (0.0..10.0).contains(&t) && t.fract() == 0.0 {
                Ok(t as usize)
            } else {
                Err(CmlError::invalid("digits label", t, "a whole number 0-9"))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Labelled::new(
        d.num_features,
        d.data.iter().map(|&v| f64::from(v)).collect(),
        labels,
    )
}

/// Without the `datasets` feature the digits are not built in.
#[cfg(not(feature = "datasets"))]
pub fn load_digits() -> Result<Labelled> {
    Err(CmlError::invalid(
        "data set",
        "digits",
        "build with the `datasets` feature (on by default) to load the digits",
    ))
}

/// A three-way split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: Labelled,
    pub validation: Labelled,
    pub test: Labelled,
}

/// Shuffles the rows with `seed` and cuts them into `train`, `validation` and the rest (test).
pub fn split(data: &Labelled, train: usize, validation: usize, seed: u64) -> Result<Split> {
    if train == 0 || validation == 0 || train + validation >= data.len() {
        return Err(CmlError::invalid(
            "split sizes",
            format!("{train} train, {validation} validation of {} rows", data.len()),
            "at least one row in each of train, validation and test",
        ));
    }
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut seeded(seed));
    Ok(Split {
        train: data.select(&order[..train]),
        validation: data.select(&order[train..train + validation]),
        test: data.select(&order[train + validation..]),
    })
}

/// Per-feature mean and standard deviation of the rows it was fitted on.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardiser {
    pub mean: Vec<f64>,
    /// A constant feature (std 0, such as a corner pixel that is always blank) keeps scale 1.
    pub scale: Vec<f64>,
}

impl Standardiser {
    /// Fitted on `data` alone (the training part: nothing of validation or test leaks in).
    pub fn fit(data: &Labelled) -> Result<Self> {
        if data.is_empty() {
            return Err(CmlError::invalid("standardisation", "0 rows", "at least one row"));
        }
        let (n, f) = (data.len() as f64, data.features);
        let mut mean = vec![0.0; f];
        for i in 0..data.len() {
            for (m, v) in mean.iter_mut().zip(data.row(i)) {
                *m += v / n;
            }
        }
        let mut var = vec![0.0; f];
        for i in 0..data.len() {
            for ((s, v), m) in var.iter_mut().zip(data.row(i)).zip(&mean) {
                *s += (v - m) * (v - m) / n;
            }
        }
        let scale = var
            .iter()
            .map(|v| if *v > 1e-12 { v.sqrt() } else { 1.0 })
            .collect();
        Ok(Standardiser { mean, scale })
    }

    pub fn apply(&self, data: &Labelled) -> Labelled {
        let mut out = data.clone();
        for row in out.x.chunks_exact_mut(data.features) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) / s;
            }
        }
        out
    }
}

/// A square image of `side x side` pixels (row-major) turned `quarter_turns` times by 90 degrees
/// counter-clockwise: the pixel at row `r`, column `c` of the result is the input's at row `c`,
/// column `side - 1 - r`.
pub fn rotate(image: &[f64], side: usize, quarter_turns: usize) -> Vec<f64> {
    assert_eq!(image.len(), side * side, "a square image");
    let mut out = image.to_vec();
    for _ in 0..quarter_turns % 4 {
        let prev = out.clone();
        for r in 0..side {
            for c in 0..side {
                out[r * side + c] = prev[c * side + (side - 1 - r)];
            }
        }
    }
    out
}
