//! Seeing the trap path: statistics kept by the code that does the work.
pub mod clock;
pub mod exits;
pub mod kernel;
pub mod kstats;
pub mod phases;
pub mod timeline;
pub mod totals;
