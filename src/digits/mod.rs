//! Image data for the paper's §5.2 and §5.3 (docs/DIGITS.md): the handwritten digits shipped
//! inside a registry package, their splits and standardisation, and few-shot classification
//! episodes in the Omniglot protocol.

pub mod data;
pub mod episode;

pub use data::{Labelled, Split, Standardiser, load_digits, rotate, split};
pub use episode::{ClassPool, Episode, accuracy};
