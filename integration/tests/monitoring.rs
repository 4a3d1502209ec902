//! Issue 14: monitoring (end-to-end, real binary). Filled in by its owner.
