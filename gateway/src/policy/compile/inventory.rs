//! `[[device]]`: the inventory fields of a device, its end-of-support
//! date and warning window, and the SBOM checked against its SHA-256.

use std::sync::Arc;

use super::Compiler;
use crate::config::schema::DeviceSection;
use crate::policy::inventory::{months_before, Device, Sbom};

impl Compiler<'_> {
    pub(super) fn device(&mut self, d: &DeviceSection, field: &str, warning_months: u32) -> Device {
        let end_of_support = match d.end_of_support.as_ref().map(|e| (e, e.get_ref())) {
            None => None,
            Some((_, dt)) if dt.date.is_some() && dt.time.is_none() => {
                dt.date.map(|date| date.to_string())
            }
            Some((eos, _)) => {
                let msg = "must be a date such as 2019-06-30".to_string();
                self.err(eos.span(), &format!("{field}.end_of_support"), msg);
                None
            }
        };
        let support_warning_from = end_of_support
            .as_deref()
            .and_then(|e| months_before(e, warning_months));
        Device {
            id: Arc::from(d.id.get_ref().as_str()),
            name: d.name.clone(),
            manufacturer: d.manufacturer.clone(),
            model: d.model.clone(),
            location: d.location.clone(),
            owner: d.owner.clone(),
            end_of_support,
            support_warning_from,
            serial_number: d.serial_number.clone(),
            udi: d.udi.clone(),
            software_version: d.software_version.clone(),
            lifecycle: d.lifecycle.as_ref().map(|l| *l.get_ref()),
            sbom: self.sbom(d, field),
            mds2: d.mds2.clone(),
            known_vulnerabilities: d.known_vulnerabilities.clone(),
        }
    }

    /// `sbom` and `sbom_sha256` come together, and the file must hash to
    /// the recorded value: an SBOM that changed without its record is an
    /// inventory that no longer describes the device.
    fn sbom(&mut self, d: &DeviceSection, field: &str) -> Option<Sbom> {
        match (&d.sbom, &d.sbom_sha256) {
            (None, None) => None,
            (Some(path), None) => {
                let msg =
                    "an SBOM needs `sbom_sha256`, the SHA-256 of the file (sha256sum prints it)";
                self.err(path.span(), &format!("{field}.sbom"), msg.into());
                None
            }
            (None, Some(hash)) => {
                let msg = "`sbom_sha256` without `sbom`: name the SBOM file";
                self.err(hash.span(), &format!("{field}.sbom_sha256"), msg.into());
                None
            }
            (Some(path_s), Some(hash)) => {
                let want = hash.get_ref().trim().to_ascii_lowercase();
                if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
                    let msg = format!("{:?} is not a SHA-256 (64 hex digits)", hash.get_ref());
                    self.err(hash.span(), &format!("{field}.sbom_sha256"), msg);
                    return None;
                }
                let path = self.cfg.resolve(path_s.get_ref());
                let bytes = match self.read_file(&path) {
                    Ok(b) => b,
                    Err(e) => {
                        let msg = format!("cannot read SBOM {}: {e}", path.display());
                        self.err(path_s.span(), &format!("{field}.sbom"), msg);
                        return None;
                    }
                };
                let got = sha256_hex(&bytes);
                if got != want {
                    let msg = format!(
                        "{} has SHA-256 {got}, not the recorded {want}: update `sbom_sha256` if the new SBOM is the device's",
                        path.display()
                    );
                    self.err(hash.span(), &format!("{field}.sbom_sha256"), msg);
                    return None;
                }
                Some(Sbom { path, sha256: got })
            }
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
