//! The benchmark workloads of `shared/bench/WORKLOADS.md`, run against EntiDB and the
//! references (SQLite through rusqlite, redb) in one process: [`workloads`] (W1-W10) and
//! [`indexes`] (I1-I3 and the full-text F1-F2). Reached through `cargo bench -p entidb-bench`
//! and through `entidb bench`. Results and their analysis: `docs/benchmarks.md`.

pub mod indexes;
pub mod workloads;

pub use workloads::Res;
