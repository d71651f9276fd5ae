//! Image data for the paper's §5.2 and §5.3 (docs/DIGITS.md): the handwritten digits shipped
//! inside a registry package, their splits and standardisation, a classifier with one
//! weight-decay strength per parameter, and few-shot classification episodes in the Omniglot
//! protocol.

pub mod data;
pub mod decay_classifier;
pub mod episode;

pub use data::{IMAGES, Labelled, Split, Standardiser, load_digits, rotate, split};
pub use decay_classifier::DecayClassifier;
pub use episode::{
    ClassPool, Episode, FewShotSplit, META_TEST_DIGITS, META_TRAIN_DIGITS, VALIDATION_CLASSES, accuracy,
    same_shape,
};
