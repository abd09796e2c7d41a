//! sluice-model: the product's nouns, with no IO and no async.
//!
//! Everything other crates agree on lives here: the validated project
//! ([`config::Project`], parsed from `sluice.toml`), data contracts
//! ([`contract::Contract`]), events ([`event::Event`]) and the small
//! [`ErrorCode`] table every error maps to at the edges (HTTP status, exit
//! code). Nothing here touches the disk, the network or a clock it was not
//! handed.
//!
//! ```
//! let project = sluice_model::config::Project::parse(
//!     "version = 1\n[buckets.raw]\n",
//!     "sluice.toml",
//!     &|_| Err("no files".to_string()),
//! )
//! .unwrap();
//! assert!(project.buckets.contains_key("raw"));
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod contract;
pub mod event;
pub mod key;
pub mod schedule;

/// The small set of error kinds every error in sluice maps to, once, at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The caller sent something wrong (a bad key, a bad query, a bad file).
    BadInput,
    /// The named thing does not exist.
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// A dependency (disk, state store) is unavailable; retrying may help.
    Unavailable,
    /// A deadline passed.
    Timeout,
    /// A bug in sluice.
    Internal,
}

impl ErrorCode {
    /// Whether a job failing with this code is worth another attempt.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Internal
        )
    }
}
