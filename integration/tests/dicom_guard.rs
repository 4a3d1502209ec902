//! The DICOM guard end to end: dcmtk tools through moat to dcmtk peers.

mod support;
