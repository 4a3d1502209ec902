//! Issue 14: siem (end-to-end, real binary). Filled in by its owner.
