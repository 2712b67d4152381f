//! The room's alarm: firing it (clients or not), and retrying a handler
//! that trapped with exponential backoff, a few times, before giving up.

use std::time::Duration;

use tracing::{error, warn};

use super::actor::{Trapped, call};
use super::{Actor, now_ms};
use crate::engine::wit;
use crate::metrics::RoomCall;

impl Actor {
    /// Calls the alarm handler; if it traps, resets the room like any trap
    /// and schedules a retry with exponential backoff, a few times.
    pub(super) async fn fire_alarm(&mut self) {
        self.mark_handled();
        let retry = self.table().alarm_retry;
        self.table().alarm_at = None;
        self.table().alarm_retry = 0;
        let info = wit::AlarmInfo { retry_count: retry };
        if let Err(Trapped(e)) = call!(self, RoomCall::Alarm, |room, store| room
            .call_alarm(store, info))
        {
            self.fail("alarm", e);
            if retry < self.settings.alarm_retries {
                let delay = retry_delay(self.settings.alarm_retry_base, retry);
                let table = self.table();
                table.alarm_at = Some(now_ms().saturating_add(delay.as_millis() as u64));
                table.alarm_retry = retry + 1;
                warn!(project = %self.project, retry = retry + 1, delay_ms = delay.as_millis() as u64, "alarm handler failed; retrying");
            } else {
                self.metrics.alarm_given_up();
                error!(project = %self.project, attempts = retry + 1, "alarm handler failed every time; giving up");
            }
        }
    }
}

/// The wait before retry number `retry + 1`: `base`, doubled with each
/// retry already made, saturating.
fn retry_delay(base: Duration, retry: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
}

/// Sleeps until `at`, milliseconds since the Unix epoch (the alarm's clock).
pub(super) async fn sleep_until_ms(at: u64) {
    let now = now_ms();
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_and_saturate() {
        let base = Duration::from_secs(1);
        let delays: Vec<u64> = (0..4).map(|r| retry_delay(base, r).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        // Past 31 doublings the factor stays at u32::MAX, not zero.
        assert_eq!(retry_delay(base, 40), base * u32::MAX);
    }
}
