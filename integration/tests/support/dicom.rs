//! dcmtk peers and DICOM helpers shared by the DICOM suites.
