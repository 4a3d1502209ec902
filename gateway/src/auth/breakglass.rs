//! Break-glass codes: sealed one-time emergency codes that stand in for a
//! TOTP code on services with `break_glass = true`, for a clinical
//! emergency when the second factor is not at hand.
//!
//! `moat breakglass --codes FILE issue --user U` prints a set of codes for
//! a sealed envelope and keeps only their argon2 hashes, in the file named
//! by `[auth] break_glass_file`. A code reads `ID-SECRET`: the ID (four
//! characters, public, in the audit trail) picks the one hash to verify;
//! the secret is 100 random bits. The gateway reads the file afresh at
//! every use and marks the code used in it (atomically) before it opens
//! anything, so a used code stays used across restarts.
//!
//! The file is runtime state, not policy: never compiled or watched.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use super::password;
use super::users::{check_secret_file_mode, write_atomic};

/// Codes `issue` makes unless told otherwise.
pub const DEFAULT_CODES: usize = 8;
/// Unambiguous characters (no 0/O, 1/I/L): read aloud, typed in a hurry.
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const ID_LEN: usize = 4;
/// 20 characters of a 31-letter alphabet: over 99 bits.
const SECRET_LEN: usize = 20;

/// Why a code was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemError {
    /// No unused code of this user matches (also: a malformed code).
    NoSuchCode,
    /// The code matched one already used.
    AlreadyUsed,
    /// The file could not be read, parsed or rewritten (names the file).
    File(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodesFile {
    #[serde(default, rename = "code")]
    codes: Vec<Code>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Code {
    user: String,
    id: String,
    /// argon2id of the secret part only.
    hash: String,
    issued_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_at: Option<u64>,
}

/// One redeem at a time in this process: two uses of one code, exactly
/// one wins.
static REDEEM: Mutex<()> = Mutex::new(());

/// The codes file; a missing one is empty only where `missing_ok` (issue
/// creates it). When a code is used, a missing file is a setup error, not
/// a wrong code: it must not count towards the person's lockout.
fn read(path: &Path, missing_ok: bool) -> Result<CodesFile, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_ok => {
            return Ok(CodesFile::default())
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    check_secret_file_mode(path)?;
    toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!(":{line}")
            })
            .unwrap_or_default();
        // toml's message quotes no value of ours beyond the key names.
        format!("{}{at}: {}", path.display(), e.message())
    })
}

fn write(path: &Path, file: &CodesFile) -> Result<(), String> {
    let mut text = String::from(
        "# moat break-glass codes, written by `moat breakglass` and by moat when a\n\
         # code is used. Only argon2 hashes of the codes: keep it mode 0600.\n\n",
    );
    text.push_str(&toml::to_string(file).map_err(|e| e.to_string())?);
    write_atomic(path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `ID-SECRET` in any case, with dashes and spaces anywhere: (ID, SECRET).
fn parse(code: &str) -> Option<(String, String)> {
    let clean: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid = clean.len() == ID_LEN + SECRET_LEN && clean.bytes().all(|b| ALPHABET.contains(&b));
    valid.then(|| (clean[..ID_LEN].to_string(), clean[ID_LEN..].to_string()))
}

fn random_chars(n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut byte = [0u8; 1];
        aws_lc_rs::rand::fill(&mut byte).expect("the system random source");
        // Rejection sampling: no bias towards the first letters.
        if usize::from(byte[0]) < 256 - 256 % ALPHABET.len() {
            out.push(char::from(ALPHABET[usize::from(byte[0]) % ALPHABET.len()]));
        }
    }
    out
}

/// Checks `code` against `user`'s codes in `path` and, if it matches an
/// unused one, marks it used there (atomically) before returning its id.
/// Blocking: argon2 and file I/O. One argon2 verification whatever the
/// outcome, so the time tells nothing about which ids exist.
pub fn redeem(path: &Path, user: &str, code: &str, now: u64) -> Result<String, RedeemError> {
    let _one_at_a_time = REDEEM.lock().unwrap_or_else(|e| e.into_inner());
    let mut file = read(path, false).map_err(RedeemError::File)?;
    let parsed = parse(code);
    let found = parsed.as_ref().and_then(|(id, _)| {
        file.codes
            .iter()
            .position(|c| c.user == user && c.id == *id)
    });
    let Some(i) = found else {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let _ = password::verify(DUMMY.get_or_init(password::dummy_hash), code);
        return Err(RedeemError::NoSuchCode);
    };
    let (id, secret) = parsed.expect("found by its id");
    if !password::verify(&file.codes[i].hash, &secret) {
        return Err(RedeemError::NoSuchCode);
    }
    if file.codes[i].used_at.is_some() {
        return Err(RedeemError::AlreadyUsed);
    }
    file.codes[i].used_at = Some(now);
    write(path, &file).map_err(RedeemError::File)?;
    Ok(id)
}

/// Makes `count` new codes for `user`, replacing all their old ones (a new
/// envelope voids the last), and returns them: the only time they exist
/// outside the envelope.
pub fn issue(path: &Path, user: &str, count: usize, now: u64) -> Result<Vec<String>, String> {
    let _one_at_a_time = REDEEM.lock().unwrap_or_else(|e| e.into_inner());
    let mut file = read(path, true)?;
    file.codes.retain(|c| c.user != user);
    let mut printed = Vec::with_capacity(count);
    let mut ids: Vec<String> = Vec::new();
    while printed.len() < count {
        let id = random_chars(ID_LEN);
        if ids.contains(&id) {
            continue;
        }
        let secret = random_chars(SECRET_LEN);
        file.codes.push(Code {
            user: user.to_string(),
            id: id.clone(),
            hash: password::hash(&secret),
            issued_at: now,
            used_at: None,
        });
        let groups: Vec<&str> = (0..SECRET_LEN / 5)
            .map(|g| &secret[g * 5..g * 5 + 5])
            .collect();
        printed.push(format!("{id}-{}", groups.join("-")));
        ids.push(id);
    }
    write(path, &file)?;
    Ok(printed)
}

/// `moat breakglass`: issue, list and revoke sealed emergency codes.
#[derive(Debug, Args)]
pub struct BreakGlassArgs {
    /// The codes file (`[auth] break_glass_file`); created 0600 if missing.
    #[arg(long, value_name = "FILE", global = true)]
    pub codes: Option<PathBuf>,
    #[command(subcommand)]
    pub command: BreakGlassCommand,
}

#[derive(Debug, Subcommand)]
pub enum BreakGlassCommand {
    /// Print new codes for USER (replacing their old ones) for a sealed envelope.
    Issue {
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = DEFAULT_CODES)]
        count: usize,
    },
    /// Per user: codes issued, unused, and when each used one was used.
    List,
    /// Remove every code of USER (a lost or opened envelope).
    Revoke {
        #[arg(long)]
        user: String,
    },
}

pub fn run(args: BreakGlassArgs) -> ExitCode {
    let Some(path) = args.codes else {
        eprintln!("moat breakglass: --codes FILE is required (the [auth] break_glass_file)");
        return ExitCode::from(2);
    };
    let now = crate::runtime::Clock::system().now();
    let result = match args.command {
        BreakGlassCommand::Issue { user, count } if (1..=100).contains(&count) => {
            issue(&path, &user, count, now).map(|codes| {
                println!(
                "Break-glass codes for {user}: print this, seal it in an envelope, and keep it\n\
                     where the emergency will be. Each code works once, with {user}'s password,\n\
                     instead of the authenticator code. Only their hashes are stored; these\n\
                     codes are never shown again. Issuing again voids them.\n"
            );
                for c in codes {
                    println!("  {c}");
                }
            })
        }
        BreakGlassCommand::Issue { .. } => Err("--count must be between 1 and 100".to_string()),
        BreakGlassCommand::List => read(&path, true).map(|file| {
            if file.codes.is_empty() {
                println!("no codes");
            }
            let mut users: Vec<&str> = file.codes.iter().map(|c| c.user.as_str()).collect();
            users.dedup();
            for user in users {
                let mine: Vec<&Code> = file.codes.iter().filter(|c| c.user == user).collect();
                let unused = mine.iter().filter(|c| c.used_at.is_none()).count();
                println!(
                    "{user}: {} issued at {}, {unused} unused",
                    mine.len(),
                    mine[0].issued_at
                );
                for c in mine.iter().filter(|c| c.used_at.is_some()) {
                    println!("  {} used at {}", c.id, c.used_at.unwrap_or_default());
                }
            }
        }),
        BreakGlassCommand::Revoke { user } => read(&path, false).and_then(|mut file| {
            let before = file.codes.len();
            file.codes.retain(|c| c.user != user);
            if file.codes.len() == before {
                return Err(format!("no codes of {user:?} in {}", path.display()));
            }
            write(&path, &file)
                .map(|()| println!("removed {} codes of {user}", before - file.codes.len()))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("moat breakglass: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests;
