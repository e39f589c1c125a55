//! Errors of configuration loading: an unreadable file, or the list of problems found in it.
//!
//! Built by `config::load` (structural YAML errors) and `config::validate` (every semantic
//! problem at once); printed by `rampart check`, by start-up and by a failed reload.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde_saphyr::Location;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{0}")]
    Invalid(Problems),
}

/// Every problem found in one configuration file, in file order.
///
/// Displays as one line per problem: `FILE:LINE:COL: key.path: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems {
    /// The file the positions refer to.
    file: PathBuf,
    /// At least one, sorted by position.
    problems: Vec<Problem>,
}

/// One problem at one place in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending value.
    pub line: u64,
    /// 1-based column of the offending value.
    pub column: u64,
    /// Key path such as `sites[2].upstreams[0]`; empty for the document as a whole.
    pub path: String,
    /// What is wrong, and where possible how to fix it.
    pub reason: String,
}

impl Problems {
    /// Collects `problems` about `file`, sorted by position (the sort is stable, so problems at
    /// one place keep the order they were found in).
    pub(super) fn new(file: &Path, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| (p.line, p.column));
        Self {
            file: file.to_path_buf(),
            problems,
        }
    }

    /// The configuration file the problems are in.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The problems in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.problems.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// Whether there are none (never true for a `ConfigError::Invalid`).
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{problem}", self.file.display())?;
        }
        Ok(())
    }
}

impl Problem {
    /// A problem at `line:column` (1-based) under key `path`.
    pub(super) fn new(
        line: u64,
        column: u64,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            line,
            column,
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A problem with the value at `location` (the document start for a default value).
    pub(super) fn at(
        location: &Location,
        path: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        let (line, column) = position(location);
        Self::new(line, column, path, reason)
    }
}

impl fmt::Display for Problem {
    /// `LINE:COL: key.path: reason`; the file name is added by [`Problems`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        write!(f, "{}:{}: {path}: {}", self.line, self.column, self.reason)
    }
}

/// Line and column of `location`; the document start when it is unknown (a default value).
pub(super) fn position(location: &Location) -> (u64, u64) {
    match (location.line(), location.column()) {
        (0, _) => (1, 1),
        (line, column) => (line, column.max(1)),
    }
}

/// The candidate closest to a misspelt `given`, if one is close enough to be a likely typo.
pub(super) fn closest<'a>(
    given: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(given, candidate), candidate))
        // 0.8 catches transpositions, one missing or extra letter and case slips in short
        // keys, without suggesting unrelated words.
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}
