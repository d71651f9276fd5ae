//! The instance file: every array and scalar a problem is built from, as JSON, so that another
//! framework can rebuild the same problem and recompute the same numbers.
//!
//! ```json
//! { "format": "cml-instance", "version": 1, "problem": "quadratic", "seed": 0,
//!   "scalars": { "gamma": 0.1 },
//!   "arrays": [ { "name": "A", "shape": [10, 10], "values": [ ... row-major ... ] }, ... ] }
//! ```
//! Matrices are row-major with shape `[rows, cols]`; vectors have shape `[len]`.

use crate::error::{CmlError, Result};
use crate::linalg::Vector;
use nalgebra::DMatrix;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const FORMAT: &str = "cml-instance";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceFile {
    pub format: String,
    pub version: u32,
    pub problem: String,
    /// The seed the instance was drawn with, if it was drawn (informative only).
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub scalars: BTreeMap<String, FiniteOrNot>,
    pub arrays: Vec<NamedArray>,
}

/// A named array: shape plus row-major values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamedArray {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<FiniteOrNot>,
}

/// A number as read from JSON. `null` and the strings "NaN", "Infinity", "-Infinity" are read
/// (as the non-finite values they mean) so that validation can reject them by name and index
/// instead of failing with a bare parse error.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(transparent)]
pub struct FiniteOrNot(pub f64);

impl<'de> Deserialize<'de> for FiniteOrNot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
            Null(()),
        }
        Ok(FiniteOrNot(match Raw::deserialize(d)? {
            Raw::Num(x) => x,
            Raw::Null(()) => f64::NAN,
            Raw::Text(s) => match s.as_str() {
                "Infinity" | "inf" => f64::INFINITY,
                "-Infinity" | "-inf" => f64::NEG_INFINITY,
                _ => f64::NAN,
            },
        }))
    }
}

impl InstanceFile {
    pub fn new(problem: &str, seed: Option<u64>) -> Self {
        InstanceFile {
            format: FORMAT.into(),
            version: VERSION,
            problem: problem.into(),
            seed,
            scalars: BTreeMap::new(),
            arrays: Vec::new(),
        }
    }

    pub fn push_scalar(&mut self, name: &str, value: f64) {
        self.scalars.insert(name.into(), FiniteOrNot(value));
    }

    pub fn push_matrix(&mut self, name: &str, m: &DMatrix<f64>) {
        let values = m.transpose().as_slice().iter().map(|&x| FiniteOrNot(x)).collect();
        self.arrays.push(NamedArray {
            name: name.into(),
            shape: vec![m.nrows(), m.ncols()],
            values,
        });
    }

    /// A yes-or-no setting, as 1 or 0 (read back by [`InstanceReader::flag`]).
    pub fn push_flag(&mut self, name: &str, value: bool) {
        self.push_scalar(name, f64::from(u8::from(value)));
    }

    pub fn push_vector(&mut self, name: &str, v: &Vector) {
        let values = v.iter().map(|&x| FiniteOrNot(x)).collect();
        self.arrays.push(NamedArray {
            name: name.into(),
            shape: vec![v.len()],
            values,
        });
    }

    /// Parses and checks the envelope (format, version, sizes, finiteness).
    pub fn parse(text: &str, source_name: &str) -> Result<Self> {
        let err = |reason: String| CmlError::Instance {
            source_name: source_name.into(),
            reason,
        };
        let file: InstanceFile = serde_json::from_str(text).map_err(|e| {
            err(format!(
                "not a valid instance file ({e}); expected the JSON layout documented in docs/PROBLEMS.md, section \"The instance file\""
            ))
        })?;
        if file.format != FORMAT {
            return Err(err(format!("format is '{}', expected '{FORMAT}'", file.format)));
        }
        if file.version != VERSION {
            return Err(err(format!(
                "version is {}, this build reads version {VERSION}",
                file.version
            )));
        }
        for (name, v) in &file.scalars {
            if !v.0.is_finite() {
                return Err(err(format!(
                    "scalar '{name}' is {}, only finite numbers are allowed",
                    v.0
                )));
            }
        }
        let mut seen = BTreeSet::new();
        for a in &file.arrays {
            if !seen.insert(a.name.as_str()) {
                return Err(err(format!("array '{}' appears twice", a.name)));
            }
            if a.shape.is_empty() || a.shape.len() > 2 {
                return Err(err(format!(
                    "array '{}' has shape {:?}; only vectors [n] and matrices [rows, cols] are allowed",
                    a.name, a.shape
                )));
            }
            let expected: usize = a.shape.iter().product();
            if a.values.len() != expected {
                return Err(err(format!(
                    "array '{}' has shape {:?} (= {expected} values) but holds {} values",
                    a.name,
                    a.shape,
                    a.values.len()
                )));
            }
            if let Some((i, x)) = a.values.iter().enumerate().find(|(_, x)| !x.0.is_finite()) {
                return Err(err(format!(
                    "array '{}' holds {} at index {i}; only finite numbers are allowed",
                    a.name, x.0
                )));
            }
        }
        Ok(file)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CmlError::Io {
            action: "cannot read instance file",
            path: path.into(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Writes to a temporary file beside `path` and renames it into place, so that an
    /// interrupted write never leaves half a file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("instance serialises");
        crate::io::write_atomically(path, text.as_bytes())
    }

    /// A checked reader for the problem constructors.
    pub fn reader<'a>(&'a self, source_name: &'a str) -> InstanceReader<'a> {
        InstanceReader {
            file: self,
            source_name,
            used: BTreeSet::new(),
        }
    }
}

/// Reads named arrays and scalars with shape checks, and finally rejects unused entries.
pub struct InstanceReader<'a> {
    file: &'a InstanceFile,
    source_name: &'a str,
    used: BTreeSet<String>,
}

impl InstanceReader<'_> {
    pub fn error(&self, reason: String) -> CmlError {
        CmlError::Instance {
            source_name: self.source_name.into(),
            reason,
        }
    }

    fn array(&mut self, name: &str) -> Result<&NamedArray> {
        self.used.insert(name.into());
        self.file.arrays.iter().find(|a| a.name == name).ok_or_else(|| {
            self.error(format!(
                "array '{name}' is missing (problem '{}')",
                self.file.problem
            ))
        })
    }

    /// A matrix; `rows` / `cols` given as `Some` must match.
    pub fn matrix(&mut self, name: &str, rows: Option<usize>, cols: Option<usize>) -> Result<DMatrix<f64>> {
        let a = self.array(name)?.clone();
        let ok = a.shape.len() == 2
            && rows.is_none_or(|r| a.shape[0] == r)
            && cols.is_none_or(|c| a.shape[1] == c);
        if !ok {
            let want = |d: Option<usize>| d.map_or("any".to_string(), |d| d.to_string());
            return Err(self.error(format!(
                "array '{name}' has shape {:?}, expected [{}, {}]",
                a.shape,
                want(rows),
                want(cols)
            )));
        }
        let values: Vec<f64> = a.values.iter().map(|x| x.0).collect();
        Ok(DMatrix::from_row_slice(a.shape[0], a.shape[1], &values))
    }

    /// A vector; `len` given as `Some` must match.
    pub fn vector(&mut self, name: &str, len: Option<usize>) -> Result<Vector> {
        let a = self.array(name)?.clone();
        if a.shape.len() != 1 || len.is_some_and(|n| a.shape[0] != n) {
            return Err(self.error(format!(
                "array '{name}' has shape {:?}, expected [{}]",
                a.shape,
                len.map_or("any".to_string(), |n| n.to_string())
            )));
        }
        Ok(Vector::from_iterator(a.shape[0], a.values.iter().map(|x| x.0)))
    }

    pub fn scalar(&mut self, name: &str) -> Result<f64> {
        self.used.insert(name.into());
        self.file
            .scalars
            .get(name)
            .map(|x| x.0)
            .ok_or_else(|| self.error(format!("scalar '{name}' is missing")))
    }

    /// A scalar that must be a whole number (a size or a count).
    pub fn count(&mut self, name: &str) -> Result<usize> {
        let x = self.scalar(name)?;
        if x >= 0.0 && x.fract() == 0.0 && x <= u32::MAX as f64 {
            Ok(x as usize)
        } else {
            Err(self.error(format!(
                "scalar '{name}' is {x}; allowed is a whole number, at least 0"
            )))
        }
    }

    /// A scalar that is a yes-or-no setting, written as 1 or 0.
    pub fn flag(&mut self, name: &str) -> Result<bool> {
        match self.scalar(name)? {
            0.0 => Ok(false),
            1.0 => Ok(true),
            x => Err(self.error(format!("scalar '{name}' is {x}; allowed are 1 (yes) and 0 (no)"))),
        }
    }

    /// A scalar that older files may lack.
    pub fn optional_scalar(&mut self, name: &str) -> Option<f64> {
        self.used.insert(name.into());
        self.file.scalars.get(name).map(|x| x.0)
    }

    /// Every array and scalar in the file must have been read: a stray entry is a typo.
    pub fn finish(self) -> Result<()> {
        let stray: Vec<&str> = self
            .file
            .arrays
            .iter()
            .map(|a| a.name.as_str())
            .chain(self.file.scalars.keys().map(String::as_str))
            .filter(|n| !self.used.contains(*n))
            .collect();
        if stray.is_empty() {
            Ok(())
        } else {
            let known: Vec<&str> = self.used.iter().map(String::as_str).collect();
            Err(self.error(format!(
                "unknown entries {stray:?} for problem '{}'; allowed are {known:?}",
                self.file.problem
            )))
        }
    }
}
