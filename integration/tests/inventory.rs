//! Issue 14: inventory (end-to-end, real binary). Filled in by its owner.
