//! Host names: the one checked, lower-case form shared by sites, certificates and ACME orders.

use std::fmt;

/// A lower-case DNS name, optionally with `*.` as its whole first label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    /// `*`: every name, the host pattern of an on-demand site (never a certificate's name).
    pub fn any() -> Self {
        Self("*".to_owned())
    }

    /// Whether this is [`HostName::any`].
    pub fn is_any(&self) -> bool {
        self.0 == "*"
    }

    /// Checks and lower-cases a host name: LDH labels of 1–63 bytes, 253 bytes at most,
    /// a wildcard only as the whole first label, no trailing dot, no IP address.
    ///
    /// # Errors
    /// Returns the reason, for the validator to attach a file position to.
    pub fn parse(text: &str) -> Result<Self, String> {
        let name = text.to_ascii_lowercase();
        if name.is_empty() {
            return Err("host name is empty".into());
        }
        if name.len() > 253 {
            return Err("host name is longer than 253 bytes".into());
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return Err("an IP address is not a host name".into());
        }
        let rest = name.strip_prefix("*.").unwrap_or(&name);
        if rest.is_empty() || rest.split('.').count() < usize::from(name.starts_with("*.")) + 1 {
            return Err("a wildcard needs a parent domain, as in *.example.com".into());
        }
        for label in rest.split('.') {
            if label.is_empty() {
                return Err("host name has an empty label".into());
            }
            if label.len() > 63 {
                return Err(format!("label `{label}` is longer than 63 bytes"));
            }
            if label == "*" || label.contains('*') {
                return Err("`*` is only allowed as the whole first label".into());
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(format!(
                    "label `{label}` has characters other than a-z, 0-9 and -"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("label `{label}` starts or ends with -"));
            }
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a `*.parent` wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

/// Lets maps keyed by `HostName` be searched with a lower-case `&str` without allocating.
impl std::borrow::Borrow<str> for HostName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_lowercased_and_checked() {
        assert_eq!(
            HostName::parse("WWW.Example.com").unwrap().as_str(),
            "www.example.com"
        );
        assert!(HostName::parse("*.example.com").unwrap().is_wildcard());
        assert!(HostName::parse("localhost").is_ok());
        for bad in [
            "",
            "*.",
            "*",
            "a.*.b",
            "a..b",
            "-a.b",
            "a_b.c",
            "127.0.0.1",
            "a.b.",
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
