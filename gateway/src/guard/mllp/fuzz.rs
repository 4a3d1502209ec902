//! Entry points for `fuzz/` (cargo fuzz) and the property tests: the MLLP
//! framer and the MSH reader, on what an HL7 client sends.

use super::frame::{Event, Framer};

/// Feeds `input` to the framer in the chunk sizes its first byte picks and
/// reads the MSH of every whole frame.
pub fn frame_and_read(input: &[u8]) {
    const MAX: usize = 4096;
    let (step, mut rest) = match input.split_first() {
        Some((s, rest)) => (usize::from(*s % 64) + 1, rest),
        None => return,
    };
    let mut framer = Framer::new(MAX);
    while !rest.is_empty() {
        let chunk = &rest[..step.min(rest.len())];
        let (used, event) = framer.feed(chunk);
        assert!(used <= chunk.len(), "used {used} of {}", chunk.len());
        match event {
            Some(Ok(Event::Frame)) => {
                assert!(framer.message().len() <= MAX);
                let _ = super::msh::parse(framer.message());
            }
            Some(Ok(Event::Start)) => {}
            Some(Err(_)) => return,
            None => {}
        }
        // Every call makes progress: the relay would spin otherwise.
        assert!(
            used > 0 || event.is_some(),
            "no progress on {} bytes",
            chunk.len()
        );
        rest = &rest[used..];
    }
}
