//! Criterion benches live in `benches/`; see docs/benchmarks.md.
