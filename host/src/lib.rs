//! stepbox: runs workflow steps written by many teams inside WebAssembly sandboxes, for
//! organisations that must prove who ran what, with which data, and what came out.
//!
//! Data flows one way: `cli` → `auth` → `policy` → `engine` → `sandbox`, with
//! `classify`, `audit`, `crypto` and `store` as services beneath.
//! Nothing below imports from above.

#![deny(missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod classify;
pub mod cli;
pub mod crypto;
pub mod engine;
pub mod example;
pub mod policy;
pub mod sandbox;
pub mod store;
