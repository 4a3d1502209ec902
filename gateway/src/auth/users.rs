//! The users file: who may sign in, with what.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password = "$argon2id$v=19$m=19456,t=2,p=1$…"   # PHC string
//! totp_secret = "JBSWY3DPEHPK3PXP…"              # base32, ≥ 160 bits
//! groups = ["biomed"]
//! disabled = false
//! ```
//!
//! It holds secrets, so a file that other users may read is refused.
//! Written by `moat user` atomically (temp file and rename, mode kept).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::ConfigErrors;

/// One user, as the gateway enforces it.
pub struct User {
    pub name: Arc<str>,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The raw TOTP secret (decoded from base32).
    pub totp_secret: Vec<u8>,
    pub groups: Vec<Arc<str>>,
    pub disabled: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hash or the secret.
        f.debug_struct("User")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// Every user of the users file, by name.
#[derive(Debug, Default)]
pub struct UserDirectory {
    pub users: BTreeMap<Arc<str>, Arc<User>>,
}

impl UserDirectory {
    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.users.get(name)
    }
}

/// Checks that `path` is not readable or writable by other users (nor
/// writable by its group): the error names the file, its mode and the fix.
pub fn check_secret_file_mode(path: &Path) -> Result<(), String> {
    let _ = path;
    todo!("helper A")
}

/// Parses and validates a users file's text (read by the policy compiler,
/// which hashes and watches it): every problem at once, with file, line,
/// column and field (`user[2].password`).
pub fn parse(path: &Path, text: &str) -> Result<UserDirectory, ConfigErrors> {
    let _ = (path, text);
    todo!("helper A")
}
