//! HL7 MLLP peers (python3-hl7) and helpers for the HL7 guard suite.
