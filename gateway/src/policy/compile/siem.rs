//! `[siem]`: the syslog-over-TLS sink of the audit trail.
//! (Skeleton: issue 14 fills it in.)

use toml::Spanned;

use super::Compiler;
use crate::audit::siem::SiemPolicy;
use crate::config::schema::SiemSection;

impl Compiler<'_> {
    pub(super) fn siem(&mut self, s: &Spanned<SiemSection>) -> Option<SiemPolicy> {
        let _ = s;
        None
    }
}
