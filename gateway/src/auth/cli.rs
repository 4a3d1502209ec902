//! `moat user add|passwd|reset-totp|disable|enable|remove|list`: edits
//! the users file atomically (a temp file in the same directory, renamed
//! over it, mode kept), so a running gateway sees one clean change.
//!
//! The users file is named with `--users FILE`. Nothing here prints a
//! password or a hash; a TOTP secret is printed once, to its owner, by
//! `add` and `reset-totp`.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::users::{self, check_name, UserEntry};
use super::{password, totp};
use crate::config::ConfigErrors;

/// The shortest password `add` and `passwd` accept, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// `moat user …`.
#[derive(Debug, Args)]
pub struct UserArgs {
    /// The users file (required). `add` creates it, mode 0600, if missing.
    #[arg(long, value_name = "FILE", global = true)]
    pub users: Option<PathBuf>,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum UserCommand {
    /// Add a user: asks for a password, makes a TOTP secret and shows it
    /// once (QR code, otpauth:// URI and base32).
    Add {
        name: String,
        /// A group the user belongs to (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Read the password from one line of standard input instead of
        /// prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password.
    Passwd {
        name: String,
        /// Read the password from one line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give a user a new TOTP secret (the old one stops working) and show it.
    ResetTotp { name: String },
    /// Refuse the user's sign-ins, keeping the entry.
    Disable { name: String },
    /// Admit the user's sign-ins again.
    Enable { name: String },
    /// Remove a user.
    Remove { name: String },
    /// List users: name, groups, disabled (never a hash or a secret).
    List,
}

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// Said on one line, exit status 1.
    Message(String),
    /// The users file is invalid: every problem, exit status 2.
    Invalid(ConfigErrors),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Message(format!("standard output: {e}"))
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Message(message.into()))
}

/// Runs `moat user …`, prompting on the terminal or reading standard input
/// for passwords, printing to standard output.
pub fn run(args: UserArgs) -> ExitCode {
    let Some(path) = args.users.clone() else {
        eprintln!("moat user: --users FILE is required (the users file to edit)");
        return ExitCode::from(2);
    };
    let mut stdout = io::stdout().lock();
    match execute(&path, &args.command, &mut read_password, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Message(m)) => {
            eprintln!("moat user: {m}");
            ExitCode::FAILURE
        }
        Err(Failure::Invalid(errors)) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error(s); nothing changed",
                path.display(),
                errors.len()
            );
            ExitCode::from(2)
        }
    }
}

/// A new password for `name`: one line of standard input, or asked twice
/// on the terminal without echo.
fn read_password(name: &str, from_stdin: bool) -> Result<String, Failure> {
    if from_stdin {
        let mut line = String::new();
        let n = io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::Message(format!("standard input: {e}")))?;
        if n == 0 {
            return fail("no password on standard input (one line expected)");
        }
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        return Ok(line.to_string());
    }
    let ask = |prompt: String| {
        rpassword::prompt_password(prompt).map_err(|e| {
            Failure::Message(format!(
                "cannot ask for a password on the terminal ({e}); \
                 pipe one line to --password-stdin instead"
            ))
        })
    };
    let first = ask(format!("New password for {name}: "))?;
    check_new_password(&first)?;
    let second = ask("The same password again: ".to_string())?;
    if first != second {
        return fail("the two passwords differ; nothing changed");
    }
    Ok(first)
}

/// Refuses an empty password or one shorter than [`MIN_PASSWORD_CHARS`].
pub fn check_new_password(password: &str) -> Result<(), Failure> {
    if password.is_empty() {
        return fail("the password is empty; nothing changed");
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return fail(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters; nothing changed"
        ));
    }
    Ok(())
}

/// Runs one command on the users file at `path`. `new_password(name,
/// from_stdin)` supplies passwords; `out` gets what the operator reads.
pub fn execute(
    path: &Path,
    command: &UserCommand,
    new_password: &mut dyn FnMut(&str, bool) -> Result<String, Failure>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let loaded = load(path)?;
    let creating = loaded.is_none();
    if creating && !matches!(command, UserCommand::Add { .. }) {
        return fail(format!(
            "{}: no such file (`moat user add` creates it)",
            path.display()
        ));
    }
    let mut entries = loaded.unwrap_or_default();
    match command {
        UserCommand::List => return list(path, &entries, out),
        UserCommand::Add {
            name,
            groups,
            password_stdin,
        } => {
            check_name(name).map_err(Failure::Message)?;
            for g in groups {
                check_name(g).map_err(|m| Failure::Message(format!("--group: {m}")))?;
            }
            if entries.iter().any(|e| e.name == *name) {
                return fail(format!(
                    "user {name:?} already exists in {}; nothing changed",
                    path.display()
                ));
            }
            let pw = new_password(name, *password_stdin)?;
            check_new_password(&pw)?;
            let secret = totp::generate_secret();
            let mut unique: Vec<String> = Vec::new();
            for g in groups {
                if !unique.contains(g) {
                    unique.push(g.clone());
                }
            }
            add_user(
                &mut entries,
                UserEntry {
                    name: name.clone(),
                    password: password::hash(&pw),
                    totp_secret: totp::to_base32(&secret),
                    groups: unique.clone(),
                    disabled: false,
                },
            )?;
            save(path, &entries)?;
            let groups = if unique.is_empty() {
                "no groups".to_string()
            } else {
                format!("groups: {}", unique.join(", "))
            };
            let created = if creating {
                " (created, mode 0600)"
            } else {
                ""
            };
            writeln!(
                out,
                "added {name} ({groups}) to {}{created}",
                path.display()
            )?;
            enrolment(name, &secret, out)?;
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            find(&mut entries, name, path)?;
            let pw = new_password(name, *password_stdin)?;
            check_new_password(&pw)?;
            find(&mut entries, name, path)?.password = password::hash(&pw);
            save(path, &entries)?;
            writeln!(out, "changed the password of {name}")?;
        }
        UserCommand::ResetTotp { name } => {
            let secret = totp::generate_secret();
            find(&mut entries, name, path)?.totp_secret = totp::to_base32(&secret);
            save(path, &entries)?;
            writeln!(
                out,
                "gave {name} a new TOTP secret; the old one no longer works"
            )?;
            enrolment(name, &secret, out)?;
        }
        UserCommand::Disable { name } | UserCommand::Enable { name } => {
            let disable = matches!(command, UserCommand::Disable { .. });
            let word = if disable { "disabled" } else { "enabled" };
            if set_disabled(&mut entries, name, disable, path)? {
                save(path, &entries)?;
                writeln!(out, "{word} {name}")?;
            } else {
                writeln!(out, "{name} is already {word}; nothing changed")?;
            }
        }
        UserCommand::Remove { name } => {
            remove_user(&mut entries, name, path)?;
            save(path, &entries)?;
            writeln!(out, "removed {name}")?;
        }
    }
    Ok(())
}

/// The entries of the users file, or `None` if there is no file. A file
/// others may read, or an invalid one, is not edited.
fn load(path: &Path) -> Result<Option<Vec<UserEntry>>, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
    };
    users::check_secret_file_mode(path).map_err(Failure::Message)?;
    users::parse_entries(path, &text)
        .map(Some)
        .map_err(Failure::Invalid)
}

/// Writes `entries` over the users file, atomically. The text is parsed
/// back first: moat never writes a file it would refuse to read.
fn save(path: &Path, entries: &[UserEntry]) -> Result<(), Failure> {
    let text = users::to_toml(entries);
    users::parse_entries(path, &text).map_err(Failure::Invalid)?;
    users::write_atomic(path, &text).or_else(|e| {
        fail(format!(
            "cannot write {}: {e}; nothing changed",
            path.display()
        ))
    })
}

/// What the new user's authenticator app needs, shown this once.
fn enrolment(name: &str, secret: &[u8], out: &mut dyn Write) -> Result<(), Failure> {
    let uri = totp::otpauth_uri(name, secret);
    writeln!(out)?;
    writeln!(
        out,
        "Scan this with {name}'s authenticator app (TOTP, SHA-1, 6 digits, 30 s):"
    )?;
    writeln!(out)?;
    write!(out, "{}", totp::qr_terminal(&uri))?;
    writeln!(out)?;
    writeln!(out, "or enter it by hand:")?;
    writeln!(out, "  URI:    {uri}")?;
    writeln!(out, "  secret: {}", totp::to_base32(secret))?;
    writeln!(
        out,
        "This is shown once only: moat cannot show it again (`moat user reset-totp {name}` makes a new one)."
    )?;
    Ok(())
}

fn list(path: &Path, entries: &[UserEntry], out: &mut dyn Write) -> Result<(), Failure> {
    if entries.is_empty() {
        writeln!(out, "no users in {}", path.display())?;
        return Ok(());
    }
    let rows: Vec<[String; 3]> = entries
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                if e.groups.is_empty() {
                    "-".to_string()
                } else {
                    e.groups.join(",")
                },
                if e.disabled { "disabled" } else { "enabled" }.to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "GROUPS", "STATUS"];
    let width = |c: usize| {
        rows.iter()
            .map(|r| r[c].chars().count())
            .chain([header[c].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1) = (width(0), width(1));
    writeln!(out, "{:<w0$}  {:<w1$}  {}", header[0], header[1], header[2])?;
    for r in &rows {
        writeln!(out, "{:<w0$}  {:<w1$}  {}", r[0], r[1], r[2])?;
    }
    Ok(())
}

fn no_such_user(name: &str, path: &Path) -> Failure {
    Failure::Message(format!("no user {name:?} in {}", path.display()))
}

/// The entry named `name`.
pub fn find<'a>(
    entries: &'a mut [UserEntry],
    name: &str,
    path: &Path,
) -> Result<&'a mut UserEntry, Failure> {
    entries
        .iter_mut()
        .find(|e| e.name == name)
        .ok_or_else(|| no_such_user(name, path))
}

/// Appends `entry`, refusing a name already there.
pub fn add_user(entries: &mut Vec<UserEntry>, entry: UserEntry) -> Result<(), Failure> {
    if entries.iter().any(|e| e.name == entry.name) {
        return fail(format!("user {:?} already exists", entry.name));
    }
    entries.push(entry);
    Ok(())
}

/// Removes the entry named `name`, keeping the order of the others.
pub fn remove_user(
    entries: &mut Vec<UserEntry>,
    name: &str,
    path: &Path,
) -> Result<UserEntry, Failure> {
    let i = entries
        .iter()
        .position(|e| e.name == name)
        .ok_or_else(|| no_such_user(name, path))?;
    Ok(entries.remove(i))
}

/// Sets `disabled`; whether that changed anything.
pub fn set_disabled(
    entries: &mut [UserEntry],
    name: &str,
    disabled: bool,
    path: &Path,
) -> Result<bool, Failure> {
    let e = find(entries, name, path)?;
    let changed = e.disabled != disabled;
    e.disabled = disabled;
    Ok(changed)
}

#[cfg(all(test, unix))]
mod tests;
