//! The vocabulary of a policy's life in a running gateway: what asked for
//! a reload and what came of it. Shared by the gateway that reloads, the
//! admin plane that asks for reloads and the audit trail that records them.

use serde::Serialize;

use super::diff::PolicyDiff;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    FileChange,
    Signal,
    Admin,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    Applied {
        old_version: u64,
        new_version: u64,
        changes: PolicyDiff,
    },
    /// The files compile to exactly the policy in force.
    Unchanged { version: u64 },
    Rejected {
        /// The version still in force.
        version: u64,
        errors: Vec<String>,
    },
}
