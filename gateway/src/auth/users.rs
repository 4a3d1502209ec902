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
//! Written by `moat user` atomically (temp file and rename, mode kept);
//! it keeps the order of the users, not comments.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{password, totp};
use crate::config::{check_complete, did_you_mean, ConfigError, ConfigErrors};

/// One user, as the gateway enforces it.
pub struct User {
    pub name: Arc<str>,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The raw TOTP secret (decoded from base32).
    pub totp_secret: Vec<u8>,
    pub groups: Vec<Arc<str>>,
    pub disabled: bool,
    /// [`User::credential_stamp`], worked out on first use (it is read on
    /// every request of the user's sessions).
    pub stamp: std::sync::OnceLock<u32>,
}

impl User {
    /// 32 bits of SHA-256 over the password hash and the TOTP secret:
    /// changes when either does (see [`super::session_generation`]).
    pub fn credential_stamp(&self) -> u32 {
        *self.stamp.get_or_init(|| self.compute_stamp())
    }

    fn compute_stamp(&self) -> u32 {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(b"moat-credential-stamp-v1");
        ctx.update(self.password_hash.as_bytes());
        ctx.update(&self.totp_secret);
        let d = ctx.finish();
        u32::from_be_bytes(d.as_ref()[..4].try_into().expect("SHA-256 has 32 bytes"))
    }
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

/// One `[[user]]` table as the file spells it: what `moat user` reads,
/// edits and writes back, in file order.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    // Written in this order on purpose: `disabled` and `groups` come
    // before the required fields, so a read cut short inside a user's
    // table (a file rewritten in place, read half-way) that loses a
    // `disabled = true` also loses the password and secret, and is
    // refused instead of re-enabling the user.
    pub name: String,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    /// argon2id PHC string.
    pub password: String,
    /// base32.
    pub totp_secret: String,
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hash or the secret.
        f.debug_struct("UserEntry")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

const KEYS: [&str; 5] = ["name", "password", "totp_secret", "groups", "disabled"];
const MAX_NAME_CHARS: usize = 64;

/// Is `name` a valid user or group name: 1 to 64 ASCII letters, digits,
/// `-`, `_`, `.` or `@`? The error says what is allowed.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: 1 to {MAX_NAME_CHARS} ASCII letters, digits, \
             `-`, `_`, `.` or `@`"
        ))
    }
}

/// Checks that `path` is not readable or writable by other users (nor
/// writable by its group): the error names the file, its mode and the fix.
pub fn check_secret_file_mode(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("{}: cannot read its permissions: {e}", path.display()))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o027 != 0 {
            let who = match (mode & 0o007 != 0, mode & 0o020 != 0) {
                (true, true) => "other users may read or change it, and its group may change it",
                (true, false) => "other users may read or change it",
                _ => "its group may change it",
            };
            return Err(format!(
                "{} has mode {mode:04o}: {who}, and it holds secrets; \
                 run `chmod 600 {}` (or 640, with a group only moat is in)",
                path.display(),
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Parses and validates a users file's text (read by the policy compiler,
/// which hashes and watches it): every problem at once, with file, line,
/// column and field (`user[2].password`).
pub fn parse(path: &Path, text: &str) -> Result<UserDirectory, ConfigErrors> {
    let entries = parse_entries(path, text)?;
    let mut users = BTreeMap::new();
    for e in entries {
        let name: Arc<str> = Arc::from(e.name.as_str());
        let mut groups: Vec<Arc<str>> = Vec::with_capacity(e.groups.len());
        for g in &e.groups {
            if !groups.iter().any(|x| **x == **g) {
                groups.push(Arc::from(g.as_str()));
            }
        }
        let user = User {
            name: name.clone(),
            password_hash: e.password,
            totp_secret: totp::from_base32(&e.totp_secret)
                .expect("parse_entries checked the secret"),
            groups,
            disabled: e.disabled,
            stamp: Default::default(),
        };
        users.insert(name, Arc::new(user));
    }
    Ok(UserDirectory { users })
}

/// Like [`parse`], but the entries as written, in file order (for
/// `moat user`, which writes them back).
pub fn parse_entries(path: &Path, text: &str) -> Result<Vec<UserEntry>, ConfigErrors> {
    check_complete(path, text)?;
    let toml_error =
        |e: toml::de::Error| -> ConfigErrors { ConfigError::toml(path, text, &e).into() };
    let mut errors = ConfigErrors::default();

    let top: BTreeMap<Spanned<String>, IgnoredAny> = toml::from_str(text).map_err(toml_error)?;
    for key in top.keys().filter(|k| k.get_ref() != "user") {
        errors.push(ConfigError::at(
            path,
            text,
            key.span(),
            format!(
                "unknown key `{}`: a users file has only `[[user]]` tables",
                key.get_ref()
            ),
        ));
    }
    let file: RawFile = toml::from_str(text).map_err(toml_error)?;

    let mut entries = Vec::with_capacity(file.user.len());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, table) in file.user.iter().enumerate() {
        let here = |span: std::ops::Range<usize>, field: String, msg: String| {
            ConfigError::at(path, text, span, msg).with_field(field)
        };
        let field = |key: &str| format!("user[{i}].{key}");
        let mut entry = UserEntry {
            name: String::new(),
            password: String::new(),
            totp_secret: String::new(),
            groups: Vec::new(),
            disabled: false,
        };
        let mut ok = true;
        let mut fail = |e: ConfigError| {
            errors.push(e);
            ok = false;
        };
        let mut present = [false; KEYS.len()];
        for (key, value) in table.get_ref() {
            let k = key.get_ref().as_str();
            let Some(slot) = KEYS.iter().position(|x| *x == k) else {
                let mut msg = format!(
                    "unknown field `{k}`, expected one of `{}`",
                    KEYS.join("`, `")
                );
                if let Some(s) = did_you_mean(k, KEYS) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                }
                fail(here(key.span(), format!("user[{i}]"), msg));
                continue;
            };
            present[slot] = true;
            let span = value.span();
            let wrong =
                |expected: &str| format!("expected {expected}, found {}", value.get_ref().kind());
            match (k, value.get_ref()) {
                ("name", RawValue::Str(s)) => match check_name(s) {
                    Ok(()) => match seen.get(s.as_str()) {
                        Some(&first) => fail(here(
                            span,
                            field(k),
                            format!(
                                "user {s:?} is already defined (user[{first}], line {}); \
                                 names must be unique",
                                crate::config::line_column(text, file.user[first].span().start).0
                            ),
                        )),
                        None => {
                            seen.insert(s.clone(), i);
                            entry.name = s.clone();
                        }
                    },
                    Err(msg) => fail(here(span, field(k), msg)),
                },
                ("password", RawValue::Str(s)) => match password::check_phc(s) {
                    Ok(()) => entry.password = s.clone(),
                    // The reason only: never the hash itself.
                    Err(why) => fail(here(
                        span,
                        field(k),
                        format!(
                            "not a usable argon2id password hash ({why}); \
                             set one with `moat user passwd NAME`"
                        ),
                    )),
                },
                ("totp_secret", RawValue::Str(s)) => match totp::from_base32(s) {
                    Some(bytes) if bytes.len() >= totp::SECRET_BYTES => {
                        entry.totp_secret = s.clone()
                    }
                    // Neither the secret nor any of its characters.
                    Some(bytes) => fail(here(
                        span,
                        field(k),
                        format!(
                            "the secret has {} bits, at least {} are needed; \
                             make a new one with `moat user reset-totp NAME`",
                            bytes.len() * 8,
                            totp::SECRET_BYTES * 8
                        ),
                    )),
                    None => fail(here(
                        span,
                        field(k),
                        "not base32 (the letters A to Z and the digits 2 to 7, `=` padding \
                         optional); make a new secret with `moat user reset-totp NAME`"
                            .to_string(),
                    )),
                },
                ("groups", RawValue::Array(items)) => {
                    for (j, item) in items.iter().enumerate() {
                        let f = format!("user[{i}].groups[{j}]");
                        match item.get_ref() {
                            RawValue::Str(g) => match check_name(g) {
                                Ok(()) => entry.groups.push(g.clone()),
                                Err(msg) => fail(here(item.span(), f, msg)),
                            },
                            other => fail(here(
                                item.span(),
                                f,
                                format!("expected a string, found {}", other.kind()),
                            )),
                        }
                    }
                }
                ("disabled", RawValue::Bool(b)) => entry.disabled = *b,
                ("groups", _) => fail(here(span, field(k), wrong("an array of group names"))),
                ("disabled", _) => fail(here(span, field(k), wrong("true or false"))),
                _ => fail(here(span, field(k), wrong("a string"))),
            }
        }
        for (slot, key) in KEYS.iter().enumerate().take(3) {
            if !present[slot] {
                fail(here(
                    table.span(),
                    format!("user[{i}]"),
                    format!("missing field `{key}`"),
                ));
            }
        }
        if ok {
            entries.push(entry);
        }
    }
    // In file order, as an operator reads the file.
    errors
        .0
        .sort_by_key(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0)));
    errors.into_result(entries)
}

/// The text of a users file holding `entries`, in their order.
pub fn to_toml(entries: &[UserEntry]) -> String {
    #[derive(Serialize)]
    struct File<'a> {
        user: &'a [UserEntry],
    }
    let mut text = String::from(
        "# moat users file, written by `moat user`: it keeps the order of the users,\n\
         # not comments. It holds password hashes and TOTP secrets: keep it mode 0600.\n",
    );
    if !entries.is_empty() {
        text.push('\n');
        text.push_str(
            &toml::to_string(&File { user: entries })
                .expect("a list of plain tables serialises to TOML"),
        );
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Replaces `path` with `text` so that a reader sees the old file or the
/// new one, never a mix: a temp file in the same directory, given the old
/// file's mode and owner (0600 for a new file), flushed to disk, renamed
/// over the target, and the directory flushed. A symlink is followed: the
/// file it points at is replaced.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let target = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(e),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let existing = match std::fs::metadata(&target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = existing
            .as_ref()
            .map_or(0o600, |m| m.permissions().mode() & 0o7777);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(old) = &existing {
            let new = tmp.as_file().metadata()?;
            if (old.uid(), old.gid()) != (new.uid(), new.gid()) {
                std::os::unix::fs::fchown(tmp.as_file(), Some(old.uid()), Some(old.gid()))
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "cannot give the new file the owner of {} ({}:{}): {e}",
                                target.display(),
                                old.uid(),
                                old.gid()
                            ),
                        )
                    })?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = existing;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(&target).map_err(|e| e.error)?;
    #[cfg(unix)]
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

/// The file as toml reads it, before any check.
#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    user: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<RawValue>>>>,
}

/// A value of a `[[user]]` table, with spans down to array items, so that
/// each field is checked (and each error reported) on its own.
enum RawValue {
    Str(String),
    Bool(bool),
    Array(Vec<Spanned<RawValue>>),
    Other(&'static str),
}

impl RawValue {
    fn kind(&self) -> &'static str {
        match self {
            RawValue::Str(_) => "a string",
            RawValue::Bool(_) => "a boolean",
            RawValue::Array(_) => "an array",
            RawValue::Other(kind) => kind,
        }
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = RawValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawValue, E> {
                Ok(RawValue::Str(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<RawValue, E> {
                Ok(RawValue::Str(s))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<RawValue, E> {
                Ok(RawValue::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawValue, E> {
                Ok(RawValue::Other("an integer"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawValue, E> {
                Ok(RawValue::Other("an integer"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawValue, E> {
                Ok(RawValue::Other("a float"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<RawValue>>()? {
                    items.push(item);
                }
                Ok(RawValue::Array(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(RawValue::Other("a table or a date"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests;
