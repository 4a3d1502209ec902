//! rsyslog as a real TLS syslog collector for the SIEM suite (issue 14).
