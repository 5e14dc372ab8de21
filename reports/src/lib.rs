//! # reports — what a scenario run produced, as JSON, Markdown and plots
//!
//! A [`Report`] is the deterministic record of one run (scenario, seed, expectations,
//! metrics, every message). It contains no wall-clock figure, so the same scenario and seed
//! give a byte-identical JSON file; wall-clock speed goes to [`WallClock`] instead.
//!
//! | module | owns |
//! |---|---|
//! | [`model`] | the report schema; message-level metrics |
//! | [`derive`](mod@derive) | every metric of a run, from what the run recorded ([`RunFacts`]) |
//! | [`summary`] | the Markdown summary of a suite |
//! | [`html`] | the suite's self-contained HTML report |
//! | [`plot`] | the message time-sequence diagram |

pub mod derive;
pub mod html;
pub mod model;
pub mod plot;
pub mod summary;

pub use derive::{derive, RunFacts};
pub use model::{
    AttemptRecord, Direction, Establishment, Expectation, Gap, MessageRecord, Metrics, PathEvent,
    PathEventKind, PolicyRecord, QueryRecord, Report, ResolutionRecord, RunWallClock, WallClock,
    SCHEMA_VERSION,
};

/// Errors while writing reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("drawing {path}: {message}")]
    Plot {
        /// The file.
        path: String,
        /// The cause.
        message: String,
    },
    /// Encoding JSON failed.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Reading a report (or a suite's output) back failed.
    #[error("reading {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
}
