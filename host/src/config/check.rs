//! Problems in a config and where they are: [`ConfigError`] with its
//! file, line and column, [`Origin`] (a place in the file), and the
//! [`Checker`] that collects every problem of one run.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but something in it is wrong.
    #[error("{}: {message}", location(file, *line, *column))]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// 1-based line, 0 when the error has no position.
        line: usize,
        /// 1-based column, 0 when unknown.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// Every problem found in one configuration, in file order; shown one per
/// line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

fn location(file: &Path, line: usize, column: usize) -> String {
    match (line, column) {
        (0, _) => file.display().to_string(),
        (l, 0) => format!("{}:{l}", file.display()),
        (l, c) => format!("{}:{l}:{c}", file.display()),
    }
}

/// Where something was written: the file and the position in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The config file ("(demo)" for the built-in demo).
    pub file: PathBuf,
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// 1-based column, 0 if unknown.
    pub column: usize,
}

impl Origin {
    /// An error at this place.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&location(&self.file, self.line, self.column))
    }
}

/// Turns byte spans into [`Origin`]s for one source text.
pub(crate) struct Locator<'a> {
    pub(super) file: &'a Path,
    pub(super) src: &'a str,
}

impl Locator<'_> {
    pub(super) fn origin(&self, span: Range<usize>) -> Origin {
        let upto = &self.src[..span.start.min(self.src.len())];
        let line = upto.matches('\n').count() + 1;
        let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Origin {
            file: self.file.to_path_buf(),
            line,
            column,
        }
    }

    pub(super) fn error<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.origin(spanned.span()).error(message)
    }

    /// An error about the file as a whole.
    pub(super) fn whole(&self, message: impl Into<String>) -> ConfigError {
        Origin {
            file: self.file.to_path_buf(),
            ..Origin::default()
        }
        .error(message)
    }
}

/// Collects problems while a config is checked, so that one run reports
/// them all.
pub(crate) struct Checker<'a> {
    pub(super) loc: Locator<'a>,
    pub(super) errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    /// The value of `r`, or `fallback` after noting its error.
    pub(super) fn or<T>(&mut self, r: Result<T, ConfigError>, fallback: T) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(e);
                fallback
            }
        }
    }

    /// Notes a problem.
    pub(super) fn push(&mut self, e: ConfigError) {
        self.errors.push(e);
    }

    pub(super) fn loc(&self) -> &Locator<'a> {
        &self.loc
    }
}

impl ConfigError {
    pub(super) fn into_origin(self) -> Origin {
        match self {
            ConfigError::Invalid {
                file, line, column, ..
            } => Origin { file, line, column },
            ConfigError::Read { file, .. } => Origin {
                file,
                ..Origin::default()
            },
        }
    }
}
