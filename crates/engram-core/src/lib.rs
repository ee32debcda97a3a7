//! Engram's domain core.
//!
//! This crate holds what Engram *is*, independent of how it is stored or
//! served: the memory record and its history ([`memory`]), the Mem0 filter
//! language ([`filter`]), text handling for no-LLM ingest ([`text`]), the
//! retrieval maths ([`fusion`], [`budget`]), the ports that adapters implement
//! ([`store::Store`], [`embed::Embedder`], [`keys::KeyStore`]), who may do
//! what ([`access`]), and the service layer that every transport calls
//! ([`service::MemoryService`], [`keys::KeyService`]).
//!
//! Architecture invariant: `engram-core` does no I/O. It knows nothing about
//! HTTP, SQL, MCP, files or threads; adapters implement its traits.

pub mod access;
pub mod audit;
pub mod budget;
pub mod config;
pub mod consolidate;
pub mod embed;
pub mod error;
pub mod filter;
pub mod fusion;
pub mod idempotency;
pub mod jobs;
pub mod keys;
pub mod lifecycle;
pub mod llm;
pub mod memory;
pub mod portable;
pub mod reembed;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod text;

pub use error::{Error, ErrorCode, Result};
