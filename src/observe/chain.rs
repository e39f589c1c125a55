//! Prints an error with its whole `source()` chain on one line, exactly once.

use std::error::Error;
use std::fmt;

/// `error = %Chain(&err)` logs "what failed: because: root cause".
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load site a.test")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_every_cause_once() {
        let err = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(
            Chain(&err).to_string(),
            "cannot load site a.test: disk on fire"
        );
    }
}
