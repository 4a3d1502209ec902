//! Break-glass codes: sealed one-time emergency codes that stand in for a
//! TOTP code on services with `break_glass = true`, for a clinical
//! emergency when the second factor is not at hand. The password is still
//! needed; the gateway checks it, then calls [`redeem`].
//!
//! `moat breakglass --codes FILE issue --user U` prints a set of codes for
//! a sealed envelope and keeps only their argon2 hashes, in the file named
//! by `[auth] break_glass_file`:
//!
//! ```toml
//! [[code]]
//! user = "alice"
//! id = "K7QF"                 # public: printed on the code, in the audit trail
//! issued_at = 1764600000
//! used_at = 1764601234        # absent until used
//! hash = "$argon2id$v=19$…"   # of the secret part only
//! ```
//!
//! A code reads `ID-SECRET` (`K7QF-ABCDE-FGHJK-MNPQR-STUVW`), typed in any
//! case with or without the dashes: the ID picks the one hash to verify,
//! so an attempt costs one argon2 verification, like a password; the
//! secret is 20 characters of a 31-letter alphabet without look-alikes
//! (99 bits), so the hashes are no use to whoever reads them.
//!
//! Why it is shaped so:
//! - The gateway reads the file afresh at every use and marks the code
//!   used in it (temp file, fsync, rename) before it opens anything, so a
//!   used code stays used across restarts, and a write that fails is a
//!   code not accepted. The file is runtime state, not policy: never
//!   compiled or watched.
//! - Every read-change-write is serialised, in the process (a mutex) and
//!   across processes (an `flock` on `FILE.lock` beside it): a redeem in
//!   the gateway never writes back codes that `moat breakglass issue` or
//!   `revoke` just removed.
//! - Mode 0600 exactly: moat writes the file, so moat owns it and no
//!   group needs it. A file its group or other users may open is refused.
//!   moat also writes in its directory (the temp file, `FILE.lock`).
//! - Nothing here prints or logs a code or a hash; errors say where a
//!   problem is (`file:line:column: code[2].hash: …`), never the value.
//! - `used_at` is written before `hash`: a file cut short inside a table
//!   that loses a `used_at` loses the hash too, and is refused rather
//!   than a used code working again.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::password;
use super::users::{check_name, write_atomic};
use crate::config::{check_complete, did_you_mean, line_column, ConfigError, ConfigErrors};

/// Codes `issue` makes unless told otherwise.
pub const DEFAULT_CODES: usize = 8;
/// The most one `issue` makes.
pub const MAX_CODES: usize = 100;
/// Unambiguous characters (no 0/O, 1/I/L): read aloud, typed in a hurry.
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const ID_LEN: usize = 4;
/// 20 characters of a 31-letter alphabet: over 99 bits.
const SECRET_LEN: usize = 20;
/// The secret is printed in groups of this many, read aloud one at a time.
const GROUP_LEN: usize = 5;
/// Input longer than this is not a code, however it is spaced.
const MAX_INPUT_BYTES: usize = 200;

/// Why a code was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemError {
    /// No code of this user has this id and secret (also: a malformed
    /// code, an unknown user).
    NoSuchCode,
    /// The code matched one already used.
    AlreadyUsed,
    /// The file could not be read, parsed or rewritten (names the file).
    File(String),
}

#[derive(Debug, Default, Serialize)]
struct CodesFile {
    #[serde(rename = "code", skip_serializing_if = "Vec::is_empty")]
    codes: Vec<Code>,
}

/// One `[[code]]` table. Written in this order on purpose: `used_at`
/// comes before `hash`, so a read cut short inside a table that loses a
/// `used_at` loses the hash too, and the file is refused instead of a
/// used code working again (as the users file does with `disabled`).
#[derive(Clone, Serialize)]
struct Code {
    user: String,
    id: String,
    issued_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    used_at: Option<u64>,
    /// argon2id of the secret part only.
    hash: String,
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hash.
        f.debug_struct("Code")
            .field("user", &self.user)
            .field("id", &self.id)
            .field("issued_at", &self.issued_at)
            .field("used_at", &self.used_at)
            .finish_non_exhaustive()
    }
}

/// One redeem, issue or revoke at a time in this process: two uses of one
/// code, exactly one wins. (Other processes: [`serialise`].)
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Checks that nobody but the owner may read or change `path`: the file
/// is written by moat itself, so moat owns it and no group ever needs it
/// (stricter than the users file, which a group may read). The error
/// names the file, its mode and the fix.
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), ConfigError> {
    let mode = meta.permissions().mode() & 0o7777;
    let may = |bits: u32| match (bits & 0o4 != 0, bits & 0o2 != 0) {
        (true, true) => "read and change it",
        (true, false) => "read it",
        (false, true) => "change it",
        (false, false) => "open it",
    };
    let (group, other) = ((mode >> 3) & 0o7, mode & 0o7);
    let who = match (group != 0, other != 0) {
        (false, false) => return Ok(()),
        (true, false) => format!("its group may {}", may(group)),
        (false, true) => format!("other users may {}", may(other)),
        (true, true) => format!(
            "its group may {} and other users may {}",
            may(group),
            may(other)
        ),
    };
    Err(ConfigError::file(
        path,
        format!(
            "has mode {mode:04o}: {who}, and it holds the hashes of break-glass codes; \
             run `chmod 600 {}`",
            path.display()
        ),
    ))
}

/// The codes in `path`, or `None` if there is no file. Read afresh every
/// time: never cached, since moat and `moat breakglass` both change it.
fn read(path: &Path) -> Result<Option<CodesFile>, ConfigErrors> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConfigError::file(path, format!("cannot read its permissions: {e}")).into())
        }
    };
    check_mode(path, &meta)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read it: {e}")))?;
    parse_file(path, &text).map(Some)
}

const FIELDS: [&str; 5] = ["user", "id", "issued_at", "used_at", "hash"];
const REQUIRED: [&str; 4] = ["user", "id", "issued_at", "hash"];

/// Parses and checks a codes file's text: every problem at once, each
/// with file, line, column and field (`code[2].hash`). No message
/// repeats a value of the file (a hash, or a code pasted in the wrong
/// place), only where it is and what was expected.
fn parse_file(path: &Path, text: &str) -> Result<CodesFile, ConfigErrors> {
    check_complete(path, text)?;
    // A syntax error: toml's message names tokens and keys, not values.
    let toml_error =
        |e: toml::de::Error| -> ConfigErrors { ConfigError::toml(path, text, &e).into() };
    let mut errors = ConfigErrors::default();

    // First as plain values, which no well-formed TOML fails: the shape is
    // checked here, with our own messages (serde's would quote the value).
    let top: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(toml_error)?;
    for (key, value) in &top {
        if key.get_ref() != "code" {
            errors.push(ConfigError::at(
                path,
                text,
                key.span(),
                format!(
                    "unknown key `{}`: a break-glass codes file has only `[[code]]` tables",
                    key.get_ref()
                ),
            ));
        } else if !matches!(value.get_ref(), toml::Value::Array(items)
            if items.iter().all(toml::Value::is_table))
        {
            errors.push(ConfigError::at(
                path,
                text,
                key.span(),
                format!(
                    "expected `[[code]]` tables, found {}",
                    kind(value.get_ref())
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let raw: RawFile = toml::from_str(text).map_err(toml_error)?;

    let mut codes = Vec::with_capacity(raw.code.len());
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, table) in raw.code.iter().enumerate() {
        let here = |span: std::ops::Range<usize>, field: String, msg: String| {
            ConfigError::at(path, text, span, msg).with_field(field)
        };
        let field = |key: &str| format!("code[{i}].{key}");
        let mut code = Code {
            user: String::new(),
            id: String::new(),
            issued_at: 0,
            used_at: None,
            hash: String::new(),
        };
        // This table's problems.
        let mut bad: Vec<ConfigError> = Vec::new();
        let mut id_span = None;
        for (key, value) in table.get_ref() {
            let k = key.get_ref().as_str();
            if !FIELDS.contains(&k) {
                let mut msg = format!(
                    "unknown field `{k}`, expected one of `{}`",
                    FIELDS.join("`, `")
                );
                if let Some(s) = did_you_mean(k, FIELDS) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                }
                bad.push(here(key.span(), format!("code[{i}]"), msg));
                continue;
            }
            let span = value.span();
            let wrong =
                |expected: &str| format!("expected {expected}, found {}", kind(value.get_ref()));
            match (k, value.get_ref()) {
                ("user", toml::Value::String(s)) => match check_name(s) {
                    Ok(()) => code.user = s.clone(),
                    Err(msg) => bad.push(here(span, field(k), msg)),
                },
                ("id", toml::Value::String(s)) => {
                    if s.len() == ID_LEN && s.bytes().all(|b| ALPHABET.contains(&b)) {
                        code.id = s.clone();
                        id_span = Some(span);
                    } else {
                        // Not repeated: it may be a whole code, pasted.
                        bad.push(here(
                            span,
                            field(k),
                            format!(
                                "not a code id ({ID_LEN} capitals and digits, without 0, 1, \
                                 I, L or O)"
                            ),
                        ));
                    }
                }
                ("hash", toml::Value::String(s)) => match password::check_phc(s) {
                    Ok(()) => code.hash = s.clone(),
                    // The reason only: never the hash itself.
                    Err(why) => bad.push(here(
                        span,
                        field(k),
                        format!(
                            "not a usable argon2id hash ({why}); \
                             issue new codes with `moat breakglass issue`"
                        ),
                    )),
                },
                ("issued_at" | "used_at", toml::Value::Integer(n)) if *n >= 0 => {
                    let n = u64::try_from(*n).expect("not negative");
                    if k == "issued_at" {
                        code.issued_at = n;
                    } else {
                        code.used_at = Some(n);
                    }
                }
                ("issued_at" | "used_at", _) => bad.push(here(
                    span,
                    field(k),
                    wrong("a Unix time in seconds (a whole number, not negative)"),
                )),
                _ => bad.push(here(span, field(k), wrong("a string"))),
            }
        }
        for key in REQUIRED {
            if !table.get_ref().keys().any(|k| k.get_ref() == key) {
                bad.push(here(
                    table.span(),
                    format!("code[{i}]"),
                    format!("missing field `{key}` (a file cut short? issue new codes)"),
                ));
            }
        }
        if let (true, Some(span)) = (bad.is_empty(), id_span) {
            match seen.get(&(code.user.clone(), code.id.clone())) {
                Some(&first) => bad.push(here(
                    span,
                    field("id"),
                    format!(
                        "{:?} already has a code with this id (code[{first}], line {}); \
                         ids must be unique per user",
                        code.user,
                        line_column(text, raw.code[first].span().start).0
                    ),
                )),
                None => {
                    seen.insert((code.user.clone(), code.id.clone()), i);
                }
            }
        }
        if bad.is_empty() {
            codes.push(code);
        }
        errors.0.extend(bad);
    }
    errors
        .0
        .sort_by_key(|e| (e.line.unwrap_or(0), e.column.unwrap_or(0)));
    errors.into_result(CodesFile { codes })
}

/// "a string", "an integer", …: what a value is, never what it says.
fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// The file as toml reads it once its shape is known: spans down to each
/// field, so that each is checked (and each error reported) on its own.
#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    code: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
}

/// Every problem of `errors` on one line (for the gateway's log).
fn one_line(errors: &ConfigErrors) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The text of a codes file holding `file`.
fn to_toml(file: &CodesFile) -> String {
    let mut text = String::from(
        "# moat break-glass codes, written by `moat breakglass` and by moat when a\n\
         # code is used. Only argon2 hashes of the codes: keep it mode 0600.\n",
    );
    if !file.codes.is_empty() {
        text.push('\n');
        text.push_str(&toml::to_string(file).expect("plain tables serialise to TOML"));
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Replaces the file at `path` with `file`, atomically (mode and owner
/// kept; 0600 for a new file). The text is parsed back first: moat never
/// writes a file it would refuse to read.
fn write(path: &Path, file: &CodesFile) -> Result<(), String> {
    let text = to_toml(file);
    if let Err(errors) = parse_file(path, &text) {
        return Err(format!(
            "{}: not written, moat would refuse to read it back: {}",
            path.display(),
            one_line(&errors)
        ));
    }
    write_atomic(path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Is `c` read as nothing in a code: spaces, tabs, and the dashes a
/// word processor or a copied page may have put there.
fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '-' | '\u{2010}'..='\u{2015}' | '\u{2212}')
}

/// `ID-SECRET` in any case, with dashes and spaces anywhere: (ID, SECRET),
/// upper-case. `None` for anything else.
fn parse(code: &str) -> Option<(String, String)> {
    if code.len() > MAX_INPUT_BYTES {
        return None;
    }
    let clean: String = code
        .chars()
        .filter(|c| !is_separator(*c))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid = clean.len() == ID_LEN + SECRET_LEN && clean.bytes().all(|b| ALPHABET.contains(&b));
    valid.then(|| (clean[..ID_LEN].to_string(), clean[ID_LEN..].to_string()))
}

/// `n` characters of [`ALPHABET`] from the system's random source.
fn random_chars(n: usize) -> Result<String, String> {
    let mut out = String::with_capacity(n);
    let mut bytes = [0u8; 32];
    while out.len() < n {
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| "the system random source failed; nothing changed".to_string())?;
        // Rejection sampling: no bias towards the first letters.
        let fair = 256 - 256 % ALPHABET.len();
        for b in bytes.iter().map(|b| usize::from(*b)).filter(|b| *b < fair) {
            if out.len() < n {
                out.push(char::from(ALPHABET[b % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

/// The code as printed: the id, then the secret in groups of
/// [`GROUP_LEN`], read aloud a group at a time.
fn printed(id: &str, secret: &str) -> String {
    let groups: Vec<&str> = secret
        .as_bytes()
        .chunks(GROUP_LEN)
        .map(|g| std::str::from_utf8(g).expect("ASCII"))
        .collect();
    format!("{id}-{}", groups.join("-"))
}

/// Held while a codes file is read, changed and written back: the
/// process-wide mutex, and an exclusive `flock` on `FILE.lock` beside the
/// file for other processes (`moat breakglass` against a running moat,
/// or a second moat). Without it, a redeem that read the file before
/// `issue` replaced it would write the revoked codes back. The lock file
/// is a separate file because the codes file is replaced by a rename,
/// and a lock on the old inode would not hold against a reader of the
/// new one.
struct Serialised {
    // Dropped in this order: the file lock first, then the mutex.
    _file: std::fs::File,
    _thread: std::sync::MutexGuard<'static, ()>,
}

fn serialise(path: &Path) -> Result<Serialised, String> {
    let thread = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let lock = lock_path(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock)
        .map_err(|e| format!("cannot open the lock file {}: {e}", lock.display()))?;
    loop {
        // SAFETY: flock on a descriptor we own, which stays open (and so
        // locked) as long as the returned guard.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(Serialised {
                _file: file,
                _thread: thread,
            });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(format!("cannot lock {}: {e}", lock.display()));
        }
    }
}

/// `FILE.lock`, beside the file a symlink at `path` points at (the one
/// [`write_atomic`] replaces), so that every name of the file shares it.
fn lock_path(path: &Path) -> PathBuf {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut name = target
        .file_name()
        .map(ToOwned::to_owned)
        .unwrap_or_else(|| "breakglass".into());
    name.push(".lock");
    target.with_file_name(name)
}

/// The dummy hash for the costs of `like` (or the defaults), made once
/// per costs: what an unknown id or user is verified against.
fn dummy_like(like: Option<&str>) -> String {
    static DUMMY: Mutex<Option<(String, String)>> = Mutex::new(None);
    let costs = like.map(password::costs).unwrap_or("");
    let mut cache = DUMMY.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((c, hash)) = &*cache {
        if c == costs {
            return hash.clone();
        }
    }
    let made = password::dummy_like(like);
    *cache = Some((costs.to_string(), made.clone()));
    made
}

/// Checks `code` against `user`'s codes in `path` and, if it matches an
/// unused one, marks it used there (atomically, flushed to disk) before
/// returning its public id: a code is never accepted that the file does
/// not say is used. Blocking (argon2 and file I/O): call it off the async
/// workers.
///
/// One argon2 verification whatever the outcome, so neither the answer
/// nor its time tells which ids exist: an unknown id or user is verified
/// against a dummy hash, and a used code is told apart only after its
/// secret matched. A missing, unreadable, group- or world-accessible or
/// invalid file is `File`, naming the file (never a code or a hash).
pub fn redeem(path: &Path, user: &str, code: &str, now: u64) -> Result<String, RedeemError> {
    redeem_with(path, user, code, now, &write)
}

/// [`redeem`], writing the file back with `save`.
fn redeem_with(
    path: &Path,
    user: &str,
    code: &str,
    now: u64,
    save: &dyn Fn(&Path, &CodesFile) -> Result<(), String>,
) -> Result<String, RedeemError> {
    let _serialised = serialise(path).map_err(RedeemError::File)?;
    let mut file = match read(path) {
        Ok(Some(file)) => file,
        Ok(None) => {
            return Err(RedeemError::File(format!(
                "{}: no such file: no break-glass codes were issued \
                 (`moat breakglass --codes FILE issue --user NAME` makes them)",
                path.display()
            )))
        }
        Err(errors) => return Err(RedeemError::File(one_line(&errors))),
    };
    // Made before the lookup, so the first attempt of a process pays for
    // it whatever the code.
    let like = file
        .codes
        .iter()
        .find(|c| c.user == user)
        .or(file.codes.first())
        .map(|c| c.hash.as_str());
    let dummy = dummy_like(like);
    let parsed = parse(code);
    let found = parsed.as_ref().and_then(|(id, _)| {
        file.codes
            .iter()
            .position(|c| c.user == user && c.id == *id)
    });
    let Some((i, (id, secret))) = found.zip(parsed) else {
        let _ = password::verify(&dummy, "");
        return Err(RedeemError::NoSuchCode);
    };
    if !password::verify(&file.codes[i].hash, &secret) {
        return Err(RedeemError::NoSuchCode);
    }
    if file.codes[i].used_at.is_some() {
        return Err(RedeemError::AlreadyUsed);
    }
    file.codes[i].used_at = Some(now);
    save(path, &file).map_err(RedeemError::File)?;
    Ok(id)
}

/// Makes `count` (1 to [`MAX_CODES`]) new codes for `user`, replacing all
/// their old ones, used and unused (a new envelope voids the last), keeps
/// every other user's, and returns them: the only time they exist outside
/// the envelope. Creates the file, mode 0600, if it is missing.
pub fn issue(path: &Path, user: &str, count: usize, now: u64) -> Result<Vec<String>, String> {
    issue_codes(path, user, count, now)
        .map(|issued| issued.codes)
        .map_err(|f| f.one_line())
}

/// What `issue` did.
struct Issued {
    codes: Vec<String>,
    /// The file did not exist.
    created: bool,
    /// How many old codes of the user were voided.
    voided: usize,
}

fn issue_codes(path: &Path, user: &str, count: usize, now: u64) -> Result<Issued, Failure> {
    check_name(user).map_err(Failure::Message)?;
    if !(1..=MAX_CODES).contains(&count) {
        return fail(format!(
            "a set has 1 to {MAX_CODES} codes, not {count}; nothing changed"
        ));
    }
    let _serialised = serialise(path).map_err(Failure::Message)?;
    issue_locked(path, user, count, now)
}

/// [`issue`] once the file is [`serialise`]d.
fn issue_locked(path: &Path, user: &str, count: usize, now: u64) -> Result<Issued, Failure> {
    let existing = read(path).map_err(Failure::Invalid)?;
    let created = existing.is_none();
    let mut file = existing.unwrap_or_default();
    let before = file.codes.len();
    file.codes.retain(|c| c.user != user);
    let voided = before - file.codes.len();
    let mut codes = Vec::with_capacity(count);
    let mut ids: Vec<String> = Vec::with_capacity(count);
    while codes.len() < count {
        let id = random_chars(ID_LEN).map_err(Failure::Message)?;
        if ids.contains(&id) {
            continue;
        }
        let secret = random_chars(SECRET_LEN).map_err(Failure::Message)?;
        file.codes.push(Code {
            user: user.to_string(),
            id: id.clone(),
            issued_at: now,
            used_at: None,
            hash: password::hash(&secret),
        });
        codes.push(printed(&id, &secret));
        ids.push(id);
    }
    write(path, &file).map_err(|e| Failure::Message(format!("{e}; nothing changed")))?;
    Ok(Issued {
        codes,
        created,
        voided,
    })
}

/// `moat breakglass`: issue, list and revoke sealed emergency codes.
#[derive(Debug, Args)]
pub struct BreakGlassArgs {
    /// The codes file (`[auth] break_glass_file`); `issue` creates it,
    /// mode 0600, if missing.
    #[arg(long, value_name = "FILE", global = true)]
    pub codes: Option<PathBuf>,
    #[command(subcommand)]
    pub command: BreakGlassCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum BreakGlassCommand {
    /// Print new codes for USER for a sealed envelope, voiding all their
    /// old ones (used or not).
    Issue {
        #[arg(long)]
        user: String,
        /// How many codes (1 to 100).
        #[arg(long, default_value_t = DEFAULT_CODES)]
        count: usize,
    },
    /// Per user: codes issued and when, how many unused, and when each
    /// used one was used (never a hash).
    List,
    /// Remove every code of USER (a lost or opened envelope).
    Revoke {
        #[arg(long)]
        user: String,
    },
}

/// Why a command failed (exit status 1 either way).
#[derive(Debug)]
enum Failure {
    /// Said on one line.
    Message(String),
    /// The codes file is invalid or may not be used: every problem.
    Invalid(ConfigErrors),
}

impl Failure {
    fn one_line(&self) -> String {
        match self {
            Failure::Message(m) => m.clone(),
            Failure::Invalid(errors) => one_line(errors),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Message(format!("standard output: {e}"))
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Message(message.into()))
}

/// Runs `moat breakglass …`, printing to standard output; errors go to
/// standard error with exit status 1.
pub fn run(args: BreakGlassArgs) -> ExitCode {
    let Some(path) = args.codes else {
        eprintln!("moat breakglass: --codes FILE is required (the [auth] break_glass_file)");
        return ExitCode::from(2);
    };
    let now = crate::runtime::Clock::from_env().now();
    let mut stdout = io::stdout().lock();
    match execute(&path, &args.command, now, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Message(m)) => {
            eprintln!("moat breakglass: {m}");
            ExitCode::FAILURE
        }
        Err(Failure::Invalid(errors)) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            let changed = if matches!(args.command, BreakGlassCommand::List) {
                ""
            } else {
                "; nothing changed"
            };
            eprintln!(
                "moat breakglass: {}: {} problem(s){changed}",
                path.display(),
                errors.len()
            );
            ExitCode::FAILURE
        }
    }
}

/// Runs one command on the codes file at `path`; `out` gets what the
/// operator reads.
fn execute(
    path: &Path,
    command: &BreakGlassCommand,
    now: u64,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    match command {
        BreakGlassCommand::Issue { user, count } => {
            let issued = issue_codes(path, user, *count, now)?;
            envelope(path, user, now, &issued, out)?;
        }
        BreakGlassCommand::List => {
            // No lock: the file is replaced by a rename, so a read sees
            // one whole version of it.
            let file = read(path)
                .map_err(Failure::Invalid)?
                .ok_or_else(|| no_file(path))?;
            list(path, &file, out)?;
        }
        BreakGlassCommand::Revoke { user } => {
            let (removed, used) = revoke(path, user)?;
            writeln!(
                out,
                "removed {} of {user} ({used} used) from {}",
                n_codes(removed),
                path.display()
            )?;
        }
    }
    Ok(())
}

/// Removes every code of `user`: how many, and how many of them were used.
fn revoke(path: &Path, user: &str) -> Result<(usize, usize), Failure> {
    let _serialised = serialise(path).map_err(Failure::Message)?;
    let mut file = read(path)
        .map_err(Failure::Invalid)?
        .ok_or_else(|| no_file(path))?;
    let (mine, others): (Vec<Code>, Vec<Code>) =
        file.codes.into_iter().partition(|c| c.user == user);
    if mine.is_empty() {
        return fail(format!(
            "no codes of {user:?} in {}; nothing changed",
            path.display()
        ));
    }
    file.codes = others;
    write(path, &file).map_err(|e| Failure::Message(format!("{e}; nothing changed")))?;
    Ok((
        mine.len(),
        mine.iter().filter(|c| c.used_at.is_some()).count(),
    ))
}

fn no_file(path: &Path) -> Failure {
    Failure::Message(format!(
        "{}: no such file (`moat breakglass --codes FILE issue --user NAME` creates it)",
        path.display()
    ))
}

/// "1 code", "8 codes".
fn n_codes(n: usize) -> String {
    if n == 1 {
        "1 code".to_string()
    } else {
        format!("{n} codes")
    }
}

/// Seconds since the epoch as `2025-12-01T14:40:00Z`.
fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// The page for the envelope: what the codes are for and how to keep
/// them, then the codes, shown this once.
fn envelope(
    path: &Path,
    user: &str,
    now: u64,
    issued: &Issued,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    writeln!(
        out,
        "Break-glass codes for {user}, issued {}.\n\
         \n\
         Print this page, seal it in an envelope, sign across the flap, and keep it\n\
         where the emergency will happen. Each code works once, with {user}'s password,\n\
         in place of the authenticator code, and opens a short, audited grant.\n\
         moat stores only their hashes: these codes cannot be shown again.\n\
         Issuing a new set voids every one of them, used or not.\n",
        when(now)
    )?;
    for (i, code) in issued.codes.iter().enumerate() {
        writeln!(out, "  {:>3}.  {code}", i + 1)?;
    }
    writeln!(out)?;
    if issued.created {
        writeln!(
            out,
            "Created {} (mode 0600).\n\
             The user moat runs as must own it: moat reads it and marks codes used in it.",
            path.display()
        )?;
    } else if issued.voided > 0 {
        writeln!(
            out,
            "Voided {} {user} had before, in {}.",
            n_codes(issued.voided),
            path.display()
        )?;
    } else {
        writeln!(out, "Written to {}.", path.display())?;
    }
    Ok(())
}

fn list(path: &Path, file: &CodesFile, out: &mut dyn Write) -> Result<(), Failure> {
    if file.codes.is_empty() {
        writeln!(out, "no break-glass codes in {}", path.display())?;
        return Ok(());
    }
    // Users in the order they first appear.
    let mut users: Vec<&str> = Vec::new();
    for c in &file.codes {
        if !users.contains(&c.user.as_str()) {
            users.push(&c.user);
        }
    }
    for user in users {
        let mine: Vec<&Code> = file.codes.iter().filter(|c| c.user == user).collect();
        let unused = mine.iter().filter(|c| c.used_at.is_none()).count();
        let first = mine.iter().map(|c| c.issued_at).min().unwrap_or_default();
        let last = mine.iter().map(|c| c.issued_at).max().unwrap_or_default();
        let issued = if first == last {
            when(first)
        } else {
            format!("{} to {}", when(first), when(last))
        };
        writeln!(
            out,
            "{user}: {} issued {issued}, {unused} unused",
            n_codes(mine.len())
        )?;
        for c in mine.iter().filter(|c| c.used_at.is_some()) {
            writeln!(
                out,
                "  {} used {}",
                c.id,
                when(c.used_at.unwrap_or_default())
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
