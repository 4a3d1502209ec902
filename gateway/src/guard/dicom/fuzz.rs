//! Entry points for `fuzz/` (cargo fuzz) and the property tests: the
//! parsers that read what a DICOM client or device sends.

use super::framer::{ContextSet, Framer, Scan};
use super::pdu::{AssociateAc, AssociateRq, HEADER_LEN};

/// An A-ASSOCIATE-RQ and an A-ASSOCIATE-AC body (after the PDU header),
/// re-encoded when they parse; then the data-phase framer over the same
/// bytes in the chunks `cuts` picks, checking what it lets pass.
pub fn parse_and_frame(input: &[u8]) {
    let (cuts, body) = input.split_at(input.len().min(4));
    if let Ok(rq) = AssociateRq::try_from(body) {
        let _ = rq.called_ae();
        let _ = rq.encode(|_| true, 16_384);
    }
    if let Ok(ac) = AssociateAc::try_from(body) {
        let _ = ac.encode(&[], 16_384);
    }
    let accepted: ContextSet = [1u8, 3, 5].into_iter().collect();
    let mut framer = Framer::new(accepted, 16_384);
    // As the relay does: a header cut by a read is held and goes out in
    // front of the next read's bytes.
    let mut held: Vec<u8> = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let want = 1 + usize::from(cuts.get(i % cuts.len().max(1)).copied().unwrap_or(255));
        i += 1;
        let (piece, after) = rest.split_at(want.min(rest.len()));
        rest = after;
        held.extend_from_slice(piece);
        match framer.scan(&held) {
            Scan::All => held.clear(),
            Scan::UpTo(n) => {
                assert!(held.len() - n < HEADER_LEN, "held back {}", held.len() - n);
                held.drain(..n);
            }
            Scan::Refused(n, _) => {
                assert!(n <= held.len());
                return;
            }
        }
    }
}
