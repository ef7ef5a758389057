//! Placeholder while the core is written.
