//! Sealing one audit line into the hash chain (issue 14): the SHA-256 each
//! line costs the audit writer's thread. docs/benchmarks.md, "Evidence
//! (issue 14)".

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use moat::audit::chain::Chain;

/// A `connection_closed` event as the writer serialises it (255 bytes); a
/// sealed line is 415.
const EVENT: &[u8] = br#"{"ts":"2026-12-02T20:00:00.000Z","event":"connection_closed","conn_id":123456,"device":"pacs-1","service":"dicom","client":"10.20.40.17:51514","listen":"0.0.0.0:2762","bytes_from_client":1234,"bytes_to_client":5678,"duration_ms":12,"closed_by":"client"}"#;

fn seal(c: &mut Criterion) {
    let mut chain = Chain::fresh();
    let mut line = Vec::with_capacity(512);
    c.bench_function("audit_chain/seal_connection_closed", |b| {
        b.iter(|| {
            line.clear();
            line.extend_from_slice(EVENT);
            black_box(chain.seal(&mut line))
        })
    });
}

criterion_group!(benches, seal);
criterion_main!(benches);
