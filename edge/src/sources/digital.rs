//! Digital inputs of the gateway (a camera's alarm relay, a high-level switch): polled, debounced,
//! and reported as `DigitalInput` events (the initial state at start, then every change).

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use vigil_common::{ClockQuality, Event, EventKind, TimeSource};
use vigil_hw::InputBank;

use crate::Record;
use crate::site::SharedIo;
use crate::spool::now_ms;

/// Polls `names` on `io` every `poll` until shutdown, sending an event per debounced change.
pub async fn run(
    io: SharedIo,
    names: Vec<String>,
    debounce: Duration,
    poll: Duration,
    tx: mpsc::Sender<Record>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut bank = InputBank::new(names, debounce);
    let mut tick = tokio::time::interval(poll.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        let changes = match io.lock() {
            Ok(mut io) => bank.poll(io.as_mut(), Instant::now()),
            Err(_) => return,
        };
        for (input, result) in changes {
            let kind = match result {
                Ok(state) => {
                    failing = None;
                    EventKind::DigitalInput { input, state }
                }
                Err(e) => {
                    // Report a failing line once, not at every poll.
                    let message = e.to_string();
                    if failing.as_deref() == Some(message.as_str()) {
                        continue;
                    }
                    failing = Some(message.clone());
                    EventKind::SourceFault { source: input, message }
                }
            };
            let event = Event {
                ts_ms: now_ms(),
                clock: ClockQuality { synchronised: false, source: TimeSource::Gateway },
                kind,
            };
            if tx.send(Record::Event(event)).await.is_err() {
                return;
            }
        }
    }
}
