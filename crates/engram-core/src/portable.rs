//! The export format: versioned JSON Lines that carry everything needed to
//! rebuild memories elsewhere — every version with its vector, the history,
//! entities and scope ids — and the rules for reading it back.
//!
//! ```text
//! {"format":"engram-export","version":1,"exported_at":"…","embedding_model":{"id":"…","dim":384}}
//! {"id":"…","versions":[{…memory…,"embedding":[…]},…],"history":[{…},…]}
//! …
//! ```
//!
//! The first line is the [`ExportHeader`]; every other line one
//! [`ExportedMemory`]. Importing is idempotent: a memory whose id the store
//! already holds is skipped, so importing a file twice changes nothing.
//! Vectors from another embedding model are recomputed on import.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::memory::{HistoryEvent, Memory, MemoryId};
use crate::ports::ModelInfo;
use crate::{Error, Result};

/// `format` of the header line.
pub const EXPORT_FORMAT: &str = "engram-export";
/// The format version this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// The first line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportHeader {
    pub format: String,
    pub version: u32,
    pub exported_at: Timestamp,
    /// The model the vectors in the file come from.
    pub embedding_model: ModelInfo,
}

impl ExportHeader {
    pub fn new(exported_at: Timestamp, embedding_model: ModelInfo) -> ExportHeader {
        ExportHeader {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            exported_at,
            embedding_model,
        }
    }

    /// Parses and checks a header line.
    pub fn parse(line: &str) -> Result<ExportHeader> {
        let h: ExportHeader = serde_json::from_str(line).map_err(|e| {
            Error::invalid(format!(
                "the first line is not an Engram export header ({e}); expected {{\"format\":\"{EXPORT_FORMAT}\",\"version\":{EXPORT_VERSION},…}}"
            ))
        })?;
        if h.format != EXPORT_FORMAT {
            return Err(Error::invalid(format!(
                "the file's format is `{}`, not `{EXPORT_FORMAT}`",
                h.format
            )));
        }
        if h.version != EXPORT_VERSION {
            return Err(Error::invalid(format!(
                "export format version {} is not supported by this build (it reads version {EXPORT_VERSION})",
                h.version
            )));
        }
        Ok(h)
    }

    /// Whether `line` looks like a header (to tell exports from other JSON Lines).
    pub fn sniff(line: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|v| v["format"].as_str() == Some(EXPORT_FORMAT))
    }
}

/// One version of a memory with its vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedVersion {
    #[serde(flatten)]
    pub memory: Memory,
    pub embedding: Vec<f32>,
}

/// One memory: its versions (oldest first; the last is current) and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedMemory {
    pub id: MemoryId,
    pub versions: Vec<ExportedVersion>,
    pub history: Vec<HistoryEvent>,
}

impl ExportedMemory {
    /// Parses line `n` (1-based) of an export.
    pub fn parse_line(line: &str, n: usize) -> Result<ExportedMemory> {
        serde_json::from_str(line)
            .map_err(|e| Error::invalid(format!("line {n}: not an exported memory: {e}")))
    }

    /// Checks that a memory read from a file is whole and consistent: at
    /// least one version, all with this id and one scope, numbered 1, 2, …,
    /// only the last one current, vectors of `dim` dimensions, history of
    /// this memory only.
    /// Gives the memory another id (its versions' and history's too), and
    /// each history event the id `event_id` derives from its old one.
    pub fn rename(&mut self, id: MemoryId, event_id: impl Fn(uuid::Uuid) -> uuid::Uuid) {
        self.id = id;
        for v in &mut self.versions {
            v.memory.id = id;
        }
        for h in &mut self.history {
            h.memory_id = id;
            h.id = event_id(h.id);
        }
    }

    pub fn validate(&self, dim: usize) -> Result<()> {
        let id = self.id;
        let bad = |what: String| Err(Error::invalid(format!("memory {id}: {what}")));
        let Some(first) = self.versions.first() else {
            return bad("no versions".into());
        };
        for (i, v) in self.versions.iter().enumerate() {
            let m = &v.memory;
            if m.id != id {
                return bad(format!("version {} has id {}", i + 1, m.id));
            }
            if m.version as usize != i + 1 {
                return bad(format!(
                    "versions must be numbered 1, 2, …; found {} at position {}",
                    m.version,
                    i + 1
                ));
            }
            if m.scope != first.memory.scope {
                return bad("versions with different scopes".into());
            }
            m.scope.validate_for_write()?;
            let last = i + 1 == self.versions.len();
            if last == m.invalid_at.is_some() {
                return bad(if last {
                    "the last version is closed (deleted memories are not imported)".into()
                } else {
                    format!("version {} is not closed but is not the last", i + 1)
                });
            }
            if v.embedding.len() != dim {
                return bad(format!(
                    "version {} has a {}-dimension vector; the header's model has {dim}",
                    i + 1,
                    v.embedding.len()
                ));
            }
            if v.embedding.iter().any(|x| !x.is_finite()) || v.embedding.iter().all(|x| *x == 0.0) {
                return bad(format!(
                    "version {} has a vector with non-finite values or no direction",
                    i + 1
                ));
            }
        }
        if let Some(h) = self.history.iter().find(|h| h.memory_id != id) {
            return bad(format!(
                "history event {} belongs to memory {}",
                h.id, h.memory_id
            ));
        }
        if let Some(h) = self.history.iter().find(|h| h.scope != first.memory.scope) {
            return bad(format!(
                "history event {} has another scope than the memory",
                h.id
            ));
        }
        Ok(())
    }

    /// The current version.
    pub fn current(&self) -> Option<&Memory> {
        self.versions.last().map(|v| &v.memory)
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Memories written (with all their versions and history).
    pub imported: u64,
    /// Memories already in the store (by id), left as they were.
    pub skipped: u64,
    /// Versions whose vectors were recomputed (the file's model differs).
    pub reembedded: u64,
}

impl ImportReport {
    pub fn add(&mut self, other: &ImportReport) {
        self.imported += other.imported;
        self.skipped += other.skipped;
        self.reembedded += other.reembedded;
    }
}
