//! The HL7 MLLP guard end to end: python3-hl7 through moat to an MLLP peer.

mod support;
