//! switchboard wire contract v1.
pub mod ids;
