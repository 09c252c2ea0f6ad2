//! Fault injection for the worker's own tests, off unless `LABELMILL_FAULTS` is set:
//! `admit-panic=MARKER` panics while admitting any message whose payload contains MARKER,
//! `engine-hang=N` makes the engine hang on its N-th batch (1-based), `engine-fail=N` fails its
//! first N forward passes (a device failing every batch for a while), and `engine-slow=MS` makes
//! its first batch take MS milliseconds longer (a slow batch during a rebalance). Read once at
//! start-up.

use std::sync::OnceLock;

/// The faults asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Faults {
    /// Panic in admission on payloads holding this.
    pub admit_panic: Option<Vec<u8>>,
    /// Hang the engine thread on this batch.
    pub engine_hang: Option<u64>,
    /// Fail this many forward passes first.
    pub engine_fail: Option<u64>,
    /// Milliseconds added to the first batch.
    pub engine_slow: Option<u64>,
}

impl Faults {
    /// Parses `admit-panic=X,engine-hang=N` (unknown entries are ignored with a warning).
    pub fn parse(spec: &str) -> Self {
        let mut f = Self::default();
        for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
            match part.trim().split_once('=') {
                Some(("admit-panic", m)) => f.admit_panic = Some(m.as_bytes().to_vec()),
                Some(("engine-hang", n)) => f.engine_hang = n.parse().ok(),
                Some(("engine-fail", n)) => f.engine_fail = n.parse().ok(),
                Some(("engine-slow", n)) => f.engine_slow = n.parse().ok(),
                _ => tracing::warn!(fault = part, "unknown LABELMILL_FAULTS entry ignored"),
            }
        }
        f
    }
}

/// The process's faults (from `LABELMILL_FAULTS`).
pub fn get() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let f = std::env::var("LABELMILL_FAULTS")
            .map(|s| Faults::parse(&s))
            .unwrap_or_default();
        if f != Faults::default() {
            tracing::warn!(faults = ?f, "fault injection is on (LABELMILL_FAULTS): for tests only");
        }
        f
    })
}

/// Panics when `payload` carries the admission marker.
pub fn admit(payload: &[u8]) {
    if let Some(m) = &get().admit_panic {
        if !m.is_empty() && payload.windows(m.len()).any(|w| w == m.as_slice()) {
            panic!("injected admission fault (LABELMILL_FAULTS)");
        }
    }
}

/// Whether forward pass number `pass` (1-based) is to fail.
pub fn engine_fails(pass: u64) -> bool {
    get().engine_fail.is_some_and(|n| pass <= n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_fault() {
        let f = Faults::parse("admit-panic=BOOM, engine-hang=3,engine-fail=9,engine-slow=250");
        assert_eq!(f.admit_panic.as_deref(), Some(&b"BOOM"[..]));
        assert_eq!(f.engine_hang, Some(3));
        assert_eq!(f.engine_fail, Some(9));
        assert_eq!(f.engine_slow, Some(250));
        assert_eq!(Faults::parse(""), Faults::default());
        assert_eq!(Faults::parse("nonsense"), Faults::default());
    }
}
