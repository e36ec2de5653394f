//! The one polling loop behind every file fleetpipe reloads on change (the
//! JWKS file, the MQTT TLS certificate and key).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Something loaded from files that can be re-read.
pub(crate) trait Reload: Sync {
    /// Why a re-read failed.
    type Error: PartialEq + Send;

    /// Re-reads the files and, when their content hash is not `last`,
    /// loads them and sets `last`.
    fn poll(&self, last: &mut [u8; 32]) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Logs and counts a failed re-read.
    fn report(&self, error: &Self::Error);
}

/// Polls `source` every `interval` until `stop` fires, starting one
/// interval from now (`loaded` is the hash of what was just loaded). A
/// failure is reported once per distinct error, not once per poll, and
/// forgotten after a poll that succeeds.
pub(crate) async fn every<R: Reload>(
    source: &R,
    mut loaded: [u8; 32],
    interval: Duration,
    stop: &CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate.
    tick.tick().await;
    let mut last_error: Option<R::Error> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match source.poll(&mut loaded).await {
            Ok(()) => last_error = None,
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    source.report(&e);
                    last_error = Some(e);
                }
            }
        }
    }
}
