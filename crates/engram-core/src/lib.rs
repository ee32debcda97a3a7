//! Engram's domain core.
//!
//! This crate holds what Engram *is*, independent of how it is stored or
//! served:
//! - the domain: the memory record and its history ([`memory`]), the Mem0
//!   filter language ([`filter`]), text handling for no-LLM ingest
//!   ([`text`]), the retrieval maths ([`fusion`], [`budget`]), tunables
//!   ([`config`]), expiry rules ([`lifecycle`]), the export format
//!   ([`portable`]), who may do what ([`access`]);
//! - the [`ports`] that adapters implement (`Store`, `Embedder`, `Llm`, …);
//! - the [`service`] every transport calls, and the LLM [`pipeline`] it runs.
//!
//! Architecture invariant: `engram-core` does no I/O. It knows nothing about
//! HTTP, SQL, MCP, files or threads; adapters implement its ports.

pub mod access;
pub mod budget;
pub mod clock;
pub mod config;
pub mod correction;
pub mod ctx;
pub mod error;
pub mod filter;
pub mod fusion;
pub mod lifecycle;
pub mod memory;
pub mod pipeline;
pub mod portable;
pub mod ports;
pub mod service;
pub mod telemetry;
pub mod text;
pub mod webhook;

pub use error::{Error, ErrorCode, Result};
