//! Filling gaps from mailboxes (PROTOCOL.md section 5): a numbered frame that
//! arrives past a gap is held by the session (registry) while this reads the
//! member's mailbox and hands over what it holds after the last `seq` delivered, in
//! order; after the node's subscription was rebuilt every local member's mailbox is
//! read once, since nothing may ever arrive to reveal what the old connection
//! missed. That sweep is one task reading pipelined batches, so a node with
//! thousands of sessions neither floods the pool nor moves whole mailboxes: the
//! script (`mailbox_after.lua`) returns only the frames after the given `seq`.
//!
//! Runs beside the subscriber's dispatch loop, never in it: one task per member
//! with a read in flight; a gap reported meanwhile reads again afterwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;

use super::keys::Keys;
use super::renumber::Renumberer;
use crate::broker::{Deliveries, Delivery};
use crate::crypto::{self, PayloadCipher};
use crate::ids::{RoomId, UserId};

/// Bound of one mailbox read (or one batch of them).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Members per pipelined batch of the after-reconnect sweep.
const SWEEP_BATCH: usize = 100;
/// How many `seq`s before the last delivered a read returns too, so that frames
/// Redis numbered again after losing its latest counts are found (registry.rs
/// remembers as many).
const LOOKBACK: u64 = 32;

/// Reads mailboxes into the node's sessions.
pub(super) struct GapFiller {
    commands: super::pool::CommandPool,
    keys: Keys,
    deliveries: Arc<dyn Deliveries>,
    cipher: Option<Arc<PayloadCipher>>,
    renumber: Arc<Renumberer>,
    script: Script,
    /// Members with a read in flight, and whether another was asked for meanwhile.
    in_flight: Mutex<HashMap<(String, String), bool>>,
}

impl GapFiller {
    pub(super) fn new(
        commands: super::pool::CommandPool,
        keys: Keys,
        deliveries: Arc<dyn Deliveries>,
        cipher: Option<Arc<PayloadCipher>>,
        renumber: Arc<Renumberer>,
    ) -> Self {
        Self {
            commands,
            keys,
            deliveries,
            cipher,
            renumber,
            script: Script::new(include_str!("lua/mailbox_after.lua")),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), bool>> {
        // Plain bookkeeping: a panic elsewhere cannot leave it inconsistent.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `user`'s mailbox in `room` into its local sessions, now or right after
    /// the read in flight.
    pub(super) fn request(self: &Arc<Self>, room: &str, user: &str) {
        let key = (room.to_owned(), user.to_owned());
        {
            let mut in_flight = self.in_flight();
            if let Some(again) = in_flight.get_mut(&key) {
                *again = true;
                return;
            }
            in_flight.insert(key.clone(), false);
        }
        let filler = self.clone();
        tokio::spawn(async move { filler.run(key).await });
    }

    /// Reads the mailbox of every local member (after the subscription was
    /// rebuilt), in pipelined batches from one task.
    pub(super) fn request_all(self: &Arc<Self>) {
        let filler = self.clone();
        tokio::spawn(async move {
            let members = filler.deliveries.channels();
            for batch in members.chunks(SWEEP_BATCH) {
                if !filler.fill_batch(batch).await {
                    tracing::warn!("could not read the mailboxes after a reconnect; a gap that shows later is filled then");
                    return;
                }
            }
        });
    }

    async fn run(&self, key: (String, String)) {
        loop {
            let read = match (RoomId::parse(&key.0), UserId::parse(&key.1)) {
                (Ok(room), Ok(user)) => self.fill_batch(&[(room, user)]).await,
                _ => false,
            };
            let again = {
                let mut in_flight = self.in_flight();
                let again = in_flight.get(&key).copied().unwrap_or(false);
                if again {
                    in_flight.insert(key.clone(), false);
                } else {
                    in_flight.remove(&key);
                }
                again
            };
            if !again {
                if read {
                    // Whatever a session still waits for is not in the mailbox: gone.
                    self.deliveries.gap_filled(&key.0, &key.1);
                } else {
                    tracing::warn!(user_id = %key.1, "could not read a mailbox to fill a gap; retried at the next gap or reconnect");
                }
                return;
            }
        }
    }

    /// One pipelined read of `members`' mailboxes after what each was delivered,
    /// handed to their sessions; false when Redis could not be read.
    async fn fill_batch(&self, members: &[(RoomId, UserId)]) -> bool {
        let wanted: Vec<(&RoomId, &UserId, u64)> = members
            .iter()
            .filter_map(|(room, user)| {
                let seq = self
                    .deliveries
                    .delivered_seq(room.as_str(), user.as_str())?;
                Some((room, user, seq))
            })
            .collect();
        if wanted.is_empty() {
            return true;
        }
        let read = async {
            let mut conn = self.commands.get().await.ok()?;
            // Pipelined EVALSHA needs the script loaded on this server first.
            self.script
                .prepare_invoke()
                .load_async(&mut *conn)
                .await
                .ok()?;
            let cmds = wanted
                .iter()
                .map(|(room, user, seq)| {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(self.script.get_hash())
                        .arg(1)
                        .arg(self.keys.mailbox(room.as_str(), user.as_str()))
                        .arg(*seq)
                        .arg(LOOKBACK);
                    cmd
                })
                .collect();
            let replies = super::conn::query_per_slot(&mut conn, cmds).await.ok()?;
            super::conn::parse::<Vec<Vec<String>>>(redis::Value::Array(replies)).ok()
        };
        let Ok(Some(replies)) = tokio::time::timeout(READ_TIMEOUT, read).await else {
            return false;
        };
        for ((room, user, _), held) in wanted.iter().zip(replies) {
            let channel = self.keys.user_channel(room.as_str(), user.as_str());
            for text in &held {
                match crypto::open(self.cipher.as_deref(), &channel, text) {
                    Ok(opened) => {
                        let delivery =
                            self.deliveries
                                .deliver(room.as_str(), user.as_str(), &opened);
                        if let Delivery::Renumber { floor } = delivery {
                            self.renumber
                                .request(room.as_str(), user.as_str(), floor, &opened);
                        }
                    }
                    Err(e) => crate::metrics::envelope_dropped(e.label()),
                }
            }
            crate::metrics::gap_filled();
        }
        true
    }
}
