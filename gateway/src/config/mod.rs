//! What the files say: reading and parsing configuration, with errors that
//! name file, line and column. Turning it into something enforceable is the
//! job of [`crate::policy`].

mod error;
pub mod netfile;
pub mod schema;

use std::path::{Path, PathBuf};

pub use error::{did_you_mean, line_column, ConfigError, ConfigErrors};
pub use schema::FileConfig;

/// A parsed main config file, with the text it came from (for error spans).
#[derive(Debug)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub source: String,
    pub file: FileConfig,
}

impl LoadedConfig {
    /// Directory that relative paths in the file are resolved against.
    pub fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// A path as written in the file, resolved against [`Self::base_dir`].
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }

    /// An error at a span of the main file.
    pub fn error_at(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(&self.path, &self.source, span, message)
    }
}

/// Reads and parses the main config file.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read config: {e}")))?;
    parse(path, source)
}

/// Parses config text that claims to come from `path`.
pub fn parse(path: &Path, source: String) -> Result<LoadedConfig, ConfigErrors> {
    check_complete(path, &source)?;
    match toml::from_str::<FileConfig>(&source) {
        Ok(file) => Ok(LoadedConfig {
            path: path.to_path_buf(),
            source,
            file,
        }),
        Err(e) => {
            let mut err = ConfigError::toml(path, &source, &e);
            err.message = explain_toml_error(&err.message);
            Err(err.into())
        }
    }
}

/// Refuses a file that looks cut short. A file being rewritten in place
/// (truncated, then written) can be read in between, and most prefixes of
/// a valid policy are themselves valid TOML that silently drops whatever
/// came later: a `deny` list, a rule, a device. Requiring the last line
/// to end with a newline catches every cut that falls inside a line; an
/// empty file is refused outright. (A cut exactly at a line end cannot be
/// told from a shorter file; docs/configuration.md says what moat does.)
pub fn check_complete(path: &Path, text: &str) -> Result<(), ConfigError> {
    if text.is_empty() {
        return Err(ConfigError::file(
            path,
            "the file is empty (truncated, or still being written?)",
        ));
    }
    if !text.ends_with('\n') {
        let last_line = text.rsplit('\n').next().unwrap_or("");
        let at = text.len() - last_line.len();
        return Err(ConfigError::at(
            path,
            text,
            at..text.len(),
            "the last line has no newline at its end: the file may be truncated \
             or still being written (end every line, the last one too, with a newline)",
        ));
    }
    Ok(())
}

/// toml's messages are good; an unknown key deserves a suggestion on top.
fn explain_toml_error(message: &str) -> String {
    // "unknown field `listn`, expected one of `name`, `listen`, ..."
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match did_you_mean(unknown, candidates.iter().copied()) {
        Some(s) => format!("{message}; did you mean `{s}`?"),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests;
