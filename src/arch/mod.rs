//! Architecture support. Only x86_64 is built.
pub mod x86_64;
