//! `guard`, `[device.service.dicom]` and `[device.service.hl7]`: protocol
//! guards on `tcp` services.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::Compiler;
use crate::config::schema::{
    DicomSection, GuardKind, Hl7Section, HumanDuration, Protocol, ServiceSection,
};
use crate::guard::dicom::{self, DicomPolicy, SyntaxList};
use crate::guard::mllp::{self, MessageTypeRule, MllpPolicy, NameList};
use crate::guard::Guard;

impl Compiler<'_> {
    pub(super) fn guard(&mut self, s: &ServiceSection, field: &str) -> Option<Guard> {
        let kind = s.guard.as_ref().map(|g| *g.get_ref());
        if let (Some(g), false) = (&s.guard, s.protocol == Protocol::Tcp) {
            let msg = "protocol guards are for `protocol = \"tcp\"` services".to_string();
            self.err(g.span(), &format!("{field}.guard"), msg);
            return None;
        }
        // A settings table without its guard is a mistake, not a no-op.
        let stray = [
            (
                "dicom",
                s.dicom.as_ref().map(|t| t.span()),
                GuardKind::Dicom,
                "dicom",
            ),
            (
                "hl7",
                s.hl7.as_ref().map(|t| t.span()),
                GuardKind::Hl7Mllp,
                "hl7-mllp",
            ),
        ];
        for (table, span, wanted, name) in stray {
            if let (Some(span), true) = (span, kind != Some(wanted)) {
                let article = if table == "hl7" { "an" } else { "a" };
                let msg =
                    format!("{article} [{table}] table needs `guard = \"{name}\"` on this service");
                self.err(span, &format!("{field}.{table}"), msg);
            }
        }
        let span = s.guard.as_ref().map(|g| g.span()).unwrap_or_default();
        match kind? {
            GuardKind::Dicom => match &s.dicom {
                Some(t) => self
                    .dicom(t.get_ref(), &format!("{field}.dicom"))
                    .map(|p| Guard::Dicom(Arc::new(p))),
                None => {
                    let msg = "`guard = \"dicom\"` needs a [dicom] table with at least `ae_title` and `calling_ae_titles`".to_string();
                    self.err(span, &format!("{field}.dicom"), msg);
                    None
                }
            },
            GuardKind::Hl7Mllp => match &s.hl7 {
                Some(t) => self
                    .hl7(t.get_ref(), &format!("{field}.hl7"))
                    .map(|p| Guard::Hl7(Arc::new(p))),
                None => {
                    let msg = "`guard = \"hl7-mllp\"` needs an [hl7] table with at least `sending_applications` and `message_types`".to_string();
                    self.err(span, &format!("{field}.hl7"), msg);
                    None
                }
            },
        }
    }

    fn dicom(&mut self, t: &DicomSection, field: &str) -> Option<DicomPolicy> {
        let before = self.errors.len();
        let ae = |this: &mut Self, v: &Spanned<String>, name: &str| {
            let raw = v.get_ref();
            if !dicom::is_ae_title(raw) {
                let msg = format!(
                    "{raw:?} is not an AE title: 1 to 16 printable ASCII characters, no backslash"
                );
                this.err(v.span(), &format!("{field}.{name}"), msg);
            }
            raw.trim().to_string()
        };
        let ae_title = ae(self, &t.ae_title, "ae_title");
        if t.calling_ae_titles.get_ref().is_empty() {
            let msg = "an empty list admits no one; list the AE titles of the modalities and workstations".to_string();
            self.err(
                t.calling_ae_titles.span(),
                &format!("{field}.calling_ae_titles"),
                msg,
            );
        }
        let calling_ae_titles = t
            .calling_ae_titles
            .get_ref()
            .iter()
            .map(|v| ae(self, v, "calling_ae_titles"))
            .collect();
        let abstract_syntaxes = match &t.abstract_syntaxes {
            None => SyntaxList::default_list(),
            Some(list) => {
                if list.get_ref().is_empty() {
                    let msg = "an empty list admits no association; omit it for the default (verification, storage)".to_string();
                    self.err(list.span(), &format!("{field}.abstract_syntaxes"), msg);
                }
                match SyntaxList::parse(list.get_ref().iter().map(|e| e.get_ref().as_str())) {
                    Ok(l) => l,
                    Err((i, msg)) => {
                        self.err(
                            list.get_ref()[i].span(),
                            &format!("{field}.abstract_syntaxes"),
                            msg,
                        );
                        SyntaxList::default()
                    }
                }
            }
        };
        let max_pdu_length = match &t.max_pdu_length {
            None => dicom::DEFAULT_MAX_PDU_LENGTH,
            Some(v) => {
                let range = dicom::MAX_PDU_LENGTH_RANGE;
                if !range.contains(v.get_ref()) {
                    let msg = format!(
                        "must be between {} and {} bytes",
                        range.start(),
                        range.end()
                    );
                    self.err(v.span(), &format!("{field}.max_pdu_length"), msg);
                }
                *v.get_ref()
            }
        };
        let association_timeout = self.guard_timeout(
            &t.association_timeout,
            &format!("{field}.association_timeout"),
            dicom::DEFAULT_ASSOCIATION_TIMEOUT,
        );
        if self.errors.len() != before {
            return None;
        }
        Some(DicomPolicy {
            ae_title,
            calling_ae_titles,
            abstract_syntaxes,
            refused_contexts: t
                .refused_contexts
                .as_ref()
                .map(|r| *r.get_ref())
                .unwrap_or_default(),
            max_pdu_length,
            association_timeout,
        })
    }

    fn hl7(&mut self, t: &Hl7Section, field: &str) -> Option<MllpPolicy> {
        let before = self.errors.len();
        let names = |this: &mut Self, list: Option<&Spanned<Vec<Spanned<String>>>>, name: &str| {
            let Some(list) = list else {
                return NameList::Any;
            };
            match NameList::parse(list.get_ref().iter().map(|e| e.get_ref().as_str())) {
                Ok(l) => l,
                Err((i, msg)) => {
                    let span = list.get_ref().get(i).map_or(list.span(), |e| e.span());
                    this.err(span, &format!("{field}.{name}"), msg);
                    NameList::Any
                }
            }
        };
        let sending_applications =
            names(self, Some(&t.sending_applications), "sending_applications");
        let sending_facilities = names(self, t.sending_facilities.as_ref(), "sending_facilities");
        let receiving_applications = names(
            self,
            t.receiving_applications.as_ref(),
            "receiving_applications",
        );
        let receiving_facilities = names(
            self,
            t.receiving_facilities.as_ref(),
            "receiving_facilities",
        );
        if t.message_types.get_ref().is_empty() {
            let msg = "an empty list admits no message; list types such as \"ORU^R01\" or \"ADT\""
                .to_string();
            self.err(
                t.message_types.span(),
                &format!("{field}.message_types"),
                msg,
            );
        }
        let mut message_types = Vec::new();
        for e in t.message_types.get_ref() {
            match MessageTypeRule::parse(e.get_ref()) {
                Ok(r) => message_types.push(r),
                Err(msg) => self.err(e.span(), &format!("{field}.message_types"), msg),
            }
        }
        let max_message_bytes = match &t.max_message_bytes {
            None => mllp::DEFAULT_MAX_MESSAGE_BYTES,
            Some(v) => {
                let n = *v.get_ref() as usize;
                if !(64..=mllp::MAX_MESSAGE_BYTES_CEILING).contains(&n) {
                    let msg = format!(
                        "must be between 64 and {} bytes",
                        mllp::MAX_MESSAGE_BYTES_CEILING
                    );
                    self.err(v.span(), &format!("{field}.max_message_bytes"), msg);
                }
                n
            }
        };
        let frame_timeout = self.guard_timeout(
            &t.frame_timeout,
            &format!("{field}.frame_timeout"),
            mllp::DEFAULT_FRAME_TIMEOUT,
        );
        if self.errors.len() != before {
            return None;
        }
        Some(MllpPolicy {
            sending_applications,
            sending_facilities,
            receiving_applications,
            receiving_facilities,
            message_types,
            max_message_bytes,
            frame_timeout,
        })
    }

    /// A guard's timer: 100ms to 10m.
    fn guard_timeout(
        &mut self,
        v: &Option<Spanned<HumanDuration>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        let d = v.get_ref().0;
        if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
            self.err(v.span(), field, "must be between 100ms and 10m".to_string());
        }
        d
    }
}
