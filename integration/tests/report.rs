//! Issue 14: report (end-to-end, real binary). Filled in by its owner.
