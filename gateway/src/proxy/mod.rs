//! The data planes. `tcp` accepts every connection and runs the L4 proxy
//! (DICOM, HL7 MLLP, anything) over `relay`; `http` is the L7 proxy for
//! device web UIs, reaching the device through `upstream`'s pool.

pub mod accept;
pub(crate) mod client_body;
pub(crate) mod h2_guard;
pub mod headers;
pub mod http;
pub(crate) mod relay;
pub mod tcp;
pub(crate) mod wake;

use crate::audit::ConnMeta;
use crate::controls::{Denial, Reason};

/// An unreachable or silent device is worth an operator's attention on
/// stderr too. Called only for denials the audit trail wrote on their own,
/// so a dead device under load cannot flood the log either.
pub(crate) fn log_device_failure(conn: &ConnMeta, denial: &Denial) {
    if denial.reason == Reason::FdExhausted {
        // moat's own limit, not the device: one line now and then is enough.
        crate::warn_limited!(
            device = %conn.device,
            service = %conn.service,
            detail = denial.detail.as_deref().unwrap_or(""),
            "out of file descriptors: connection refused (raise LimitNOFILE)"
        );
        return;
    }
    if matches!(
        denial.reason,
        Reason::UpstreamUnreachable | Reason::UpstreamTimeout
    ) {
        tracing::warn!(
            device = %conn.device,
            service = %conn.service,
            reason = %denial.reason,
            detail = denial.detail.as_deref().unwrap_or(""),
            "device unreachable"
        );
    }
}
