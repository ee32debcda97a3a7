//! Where "now" comes from, and the precision it is kept at.

use jiff::Timestamp;

/// Where "now" comes from; tests substitute a controllable clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Truncates to whole milliseconds: the precision stores keep and cursors carry.
pub fn to_millis(t: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(t.as_millisecond()).unwrap_or(t)
}
