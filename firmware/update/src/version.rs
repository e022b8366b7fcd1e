//! Firmware versions and their order.
//!
//! The rule (semver-like, documented for bundle authors):
//! - a version is dotted decimal numbers, optionally followed by `-SUFFIX` (a pre-release) and/or
//!   `+BUILD` (build metadata): `1`, `1.2`, `1.2.3`, `2024.05.1`, `1.3.0-rc.2`, `1.3.0+g1234abc`;
//! - numbers compare numerically, left to right; a missing number counts as 0 (`1.2` = `1.2.0`);
//! - with equal numbers, a version with a suffix is *older* than the one without
//!   (`1.3.0-rc.2` < `1.3.0`); two suffixes compare by their dot-separated parts, numeric parts
//!   numerically and below alphanumeric ones, others in ASCII order, a shorter list first
//!   when one is a prefix of the other (`rc.2` < `rc.10` < `rc.10.1`);
//! - build metadata is ignored for ordering (`1.3.0+a` = `1.3.0+b`).

use std::cmp::Ordering;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version '{text}': {reason}")]
pub struct VersionError {
    pub text: String,
    pub reason: &'static str,
}

/// A parsed version; `Ord` is the rule in the module documentation.
#[derive(Debug, Clone)]
pub struct Version {
    numbers: Vec<u64>,
    suffix: Option<String>,
    text: String,
}

impl Version {
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let error = |reason| VersionError { text: text.to_string(), reason };
        if text.is_empty() {
            return Err(error("empty"));
        }
        if text.len() > 128 {
            return Err(error("longer than 128 characters"));
        }
        let without_build = match text.split_once('+') {
            Some((head, build)) => {
                if build.is_empty() || !build.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')) {
                    return Err(error("build metadata after '+' must be letters, digits, '.' or '-'"));
                }
                head
            }
            None => text,
        };
        let (numbers_text, suffix) = match without_build.split_once('-') {
            Some((numbers, suffix)) => {
                if suffix.is_empty()
                    || suffix.split('.').any(str::is_empty)
                    || !suffix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
                {
                    return Err(error("the suffix after '-' must be dot-separated letters, digits or '-'"));
                }
                (numbers, Some(suffix.to_string()))
            }
            None => (without_build, None),
        };
        let mut numbers = Vec::new();
        for part in numbers_text.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error("expected dot-separated numbers like 1.2.3"));
            }
            numbers.push(part.parse::<u64>().map_err(|_| error("a number is too large"))?);
        }
        Ok(Version { numbers, suffix, text: text.to_string() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn compare_suffix(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.numbers.len().max(other.numbers.len());
        for i in 0..len {
            let a = self.numbers.get(i).copied().unwrap_or(0);
            let b = other.numbers.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                order => return order,
            }
        }
        match (&self.suffix, &other.suffix) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) => compare_suffix(a, b),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).expect("valid version")
    }

    #[test]
    fn orders_numbers_numerically_and_suffixes_first() {
        let ascending = [
            "0.9",
            "0.10.0",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.2",
            "1.10",
            "2024.5.1",
        ];
        for pair in ascending.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
            assert!(v(pair[1]) > v(pair[0]));
        }
    }

    #[test]
    fn missing_numbers_are_zero_and_build_metadata_is_ignored() {
        assert_eq!(v("1.2"), v("1.2.0"));
        assert_eq!(v("1"), v("1.0.0.0"));
        assert_eq!(v("1.3.0+a"), v("1.3.0+b"));
        assert_eq!(v("1.3.0-rc.1+x"), v("1.3.0-rc.1"));
        assert_eq!(v("1.3.0+git.1").to_string(), "1.3.0+git.1");
    }

    #[test]
    fn rejects_what_is_not_a_version() {
        for bad in [
            "",
            "v1.2",
            "1..2",
            "1.2.",
            ".1",
            "1.x",
            "1.2-",
            "1.2-rc..1",
            "1.2+",
            "1 2",
            "1.2-rc_1",
            "99999999999999999999",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} must be refused");
        }
        let error = Version::parse("v1").expect_err("refused");
        assert!(error.to_string().contains("'v1'"));
    }
}
