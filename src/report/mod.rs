//! Reporting: figures drawn from rows (`plot`) and the write-up's template engine (`template`).
//! It imports only the core's utilities; the experiments fill it in.

pub mod plot;
pub mod template;
