//! Plain-text network-set files: one CIDR or address per line, `#` comments.
//!
//! Ops teams edit these without touching the main config, so every error
//! names the file and the line.

use std::path::Path;

use ipnet::IpNet;

use super::{ConfigError, ConfigErrors};

/// An entry with the 1-based line and column it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub net: IpNet,
    pub line: usize,
}

pub fn read(path: &Path) -> Result<Vec<Entry>, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read network set file: {e}")))?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, ConfigErrors> {
    // A cut-short allowlist silently drops admissions; a cut-short deny
    // list silently drops refusals. A set that is empty on purpose says so
    // in a comment line.
    super::check_complete(path, text).map_err(|e| {
        if text.is_empty() {
            ConfigError {
                message: format!(
                    "{}; a network set that is empty on purpose needs a comment line such as \"# no entries\"",
                    e.message
                ),
                ..e
            }
        } else {
            e
        }
    })?;
    let mut entries = Vec::new();
    let mut errors = ConfigErrors::default();
    for (index, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("");
        let entry = content.trim();
        if entry.is_empty() {
            continue;
        }
        let column = content.find(entry).unwrap_or(0) + 1;
        match parse_net(entry) {
            Ok(net) => entries.push(Entry {
                net,
                line: index + 1,
            }),
            Err(message) => errors.push(ConfigError {
                file: path.to_path_buf(),
                line: Some(index + 1),
                column: Some(column),
                field: None,
                message,
            }),
        }
    }
    errors.into_result(entries)
}

/// Parses "10.0.0.0/8", "10.1.2.3" (a host) or "2001:db8::/32".
///
/// A prefix with host bits set ("10.0.0.1/8") is refused: it is almost
/// always a typo, and guessing which network was meant could widen access.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("{s:?} is not a valid CIDR"))?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set; did you mean \"{}\"?",
                net.trunc()
            ));
        }
        Ok(net)
    } else {
        let ip: std::net::IpAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is not a valid IP address or CIDR"))?;
        Ok(IpNet::from(ip))
    }
}

#[cfg(test)]
mod tests;
