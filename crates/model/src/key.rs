//! Bucket names and object keys, validated so they can never escape the data directory.
//!
//! Keys are opaque to users but become paths on disk; [`ObjectKey::parse`] is
//! the one gate every writer goes through.

use std::fmt;

/// Why a bucket name or object key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Bucket names follow S3's rules: 3-63 chars of a-z, 0-9, '-' and '.'.
    #[error("invalid bucket name {0:?}: use 3-63 characters of a-z, 0-9, '-' and '.'")]
    Bucket(String),
    /// The key is empty, too long, or has a segment that could escape the bucket.
    #[error("invalid object key {key:?}: {why}")]
    Key {
        /// The refused key.
        key: String,
        /// Why it was refused.
        why: &'static str,
    },
}

/// Longest key accepted, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// A validated bucket name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketName(String);

impl BucketName {
    /// Validates a bucket name.
    pub fn parse(name: &str) -> Result<Self, KeyError> {
        let ok_len = (3..=63).contains(&name.len());
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let ok_ends = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if ok_len && ok_chars && ok_ends && !name.contains("..") {
            Ok(Self(name.to_string()))
        } else {
            Err(KeyError::Bucket(name.to_string()))
        }
    }
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated object key: relative, `/`-separated, no `.`/`..`/empty segments, no NUL or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates an object key.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        let refuse = |why| {
            Err(KeyError::Key {
                key: key.chars().take(200).collect(),
                why,
            })
        };
        if key.is_empty() {
            return refuse("empty key");
        }
        if key.len() > MAX_KEY_LEN {
            return refuse("longer than 1024 bytes");
        }
        if key.starts_with('/') || key.starts_with('\\') {
            return refuse("absolute paths are not keys");
        }
        if key.chars().any(|c| c.is_control()) {
            return refuse("control characters (including NUL) are not allowed");
        }
        if key.contains('\\') {
            return refuse("backslashes are not allowed");
        }
        for segment in key.split('/') {
            match segment {
                "" => return refuse("empty path segment ('//' or trailing '/')"),
                "." | ".." => return refuse("'.' and '..' segments are not allowed"),
                s if s.len() > 255 => return refuse("a path segment is longer than 255 bytes"),
                s if s.starts_with(".sluice") => {
                    return refuse("segments starting with '.sluice' are reserved");
                }
                _ => {}
            }
        }
        Ok(Self(key.to_string()))
    }
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            "a\\..\\b",
            "x/.sluice-tmp",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(ObjectKey::parse(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn ordinary_keys_pass() {
        for good in ["landing/2024/01/trips.csv", "a b/ü.csv", "x..y", ".hidden"] {
            assert!(ObjectKey::parse(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        assert!(BucketName::parse("raw").is_ok());
        assert!(BucketName::parse("my-bucket.1").is_ok());
        for bad in ["ab", "Raw", "-raw", "raw-", "a..b", "r_w"] {
            assert!(BucketName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
