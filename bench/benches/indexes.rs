//! `cargo bench -p entidb-bench --bench indexes -- [--scale F]` (under `cargo test`, without
//! `--bench`, a smoke pass).

fn main() -> entidb_bench::Res<()> {
    entidb_bench::indexes::run(std::env::args().collect())
}
