//! engram-sqlite
