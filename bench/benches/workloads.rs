//! `cargo bench -p entidb-bench --bench workloads -- [--scale F] [--runs N] [--compare sqlite,redb] ...`
//! (under `cargo test`, without `--bench`, a smoke pass).

fn main() -> entidb_bench::Res<()> {
    entidb_bench::workloads::run(std::env::args().collect(), &[])
}
