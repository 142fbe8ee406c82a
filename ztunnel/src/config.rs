//! Configuration sources.
