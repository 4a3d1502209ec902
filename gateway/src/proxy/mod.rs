//! The data planes. `tcp` is the L4 proxy (DICOM, HL7 MLLP, anything).

mod relay;
pub mod tcp;
