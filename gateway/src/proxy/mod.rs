//! The data planes. `tcp` is the L4 proxy (DICOM, HL7 MLLP, anything).

pub mod http;
pub(crate) mod relay;
pub mod tcp;
