//! `moat user add|passwd|reset-totp|disable|enable|remove|list`: edits
//! the users file atomically (a temp file in the same directory, renamed
//! over it, mode kept), so a running gateway sees one clean change.
