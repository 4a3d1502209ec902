//! Issue 14: audit_chain (end-to-end, real binary). Filled in by its owner.
