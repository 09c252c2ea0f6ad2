//! Which lane a document travels in: live traffic first, backfills with what is left. A pipeline
//! noun (sources tag deliveries with it, the batcher and engine queue by it, metrics label by it),
//! named in the configuration per input.

use serde::{Deserialize, Serialize};

/// Which lane an input feeds: live traffic first, backfills with what is left.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Documents services publish now.
    #[default]
    Live,
    /// Bulk re-labelling: runs at lower priority, never starves the live lane.
    Backfill,
}

impl Lane {
    /// `live` or `backfill` (metric labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Backfill => "backfill",
        }
    }
}
