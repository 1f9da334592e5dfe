//! Placeholder until the module lands.
pub mod decide;
