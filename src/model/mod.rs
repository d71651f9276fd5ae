//! Network building blocks shared by the problems: the tanh MLP, its flat parameter layout and
//! its losses. The bilevel problems built on it (complex synapse, modulation, the weight-decay
//! MLP) live in `problem/`.

pub mod mlp;

pub use mlp::Mlp;
