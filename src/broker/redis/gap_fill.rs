//! Filling gaps from mailboxes (PROTOCOL.md section 5): a numbered frame that
//! arrives past a gap is held by the session (registry) while this reads the
//! member's mailbox and hands over what it holds, in order; after the node's
//! subscription was rebuilt every local member's mailbox is read once, since
//! nothing may ever arrive to reveal what the old connection missed.
//!
//! Runs beside the subscriber's dispatch loop, never in it: one task per member
//! with a read in flight; a gap reported meanwhile reads again afterwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::keys::Keys;
use crate::broker::Deliveries;
use crate::crypto::{self, PayloadCipher};

/// Reads mailboxes into the node's sessions.
pub(super) struct GapFiller {
    commands: deadpool_redis::Pool,
    keys: Keys,
    deliveries: Arc<dyn Deliveries>,
    cipher: Option<Arc<PayloadCipher>>,
    /// Members with a read in flight, and whether another was asked for meanwhile.
    in_flight: Mutex<HashMap<(String, String), bool>>,
}

impl GapFiller {
    pub(super) fn new(
        commands: deadpool_redis::Pool,
        keys: Keys,
        deliveries: Arc<dyn Deliveries>,
        cipher: Option<Arc<PayloadCipher>>,
    ) -> Self {
        Self {
            commands,
            keys,
            deliveries,
            cipher,
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

    /// Reads the mailbox of every local member (after the subscription was rebuilt).
    pub(super) fn request_all(self: &Arc<Self>) {
        for (room, user) in self.deliveries.channels() {
            self.request(room.as_str(), user.as_str());
        }
    }

    async fn run(&self, key: (String, String)) {
        loop {
            let read = self.fill_once(&key.0, &key.1).await;
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
                // Whatever a session still waits for is not in the mailbox: gone.
                if read {
                    self.deliveries.gap_filled(&key.0, &key.1);
                }
                return;
            }
        }
    }

    /// One read; false when Redis could not be read (the gap stays held: the next
    /// reconnect reads again).
    async fn fill_once(&self, room: &str, user: &str) -> bool {
        let mailbox = self.keys.mailbox(room, user);
        let read = async {
            let mut conn = self.commands.get().await.ok()?;
            redis::cmd("LRANGE")
                .arg(&mailbox)
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut *conn)
                .await
                .ok()
        };
        let Ok(Some(held)) = tokio::time::timeout(std::time::Duration::from_secs(5), read).await
        else {
            tracing::warn!(
                user_id = user,
                "could not read a mailbox to fill a gap; retried at the next reconnect"
            );
            return false;
        };
        let channel = self.keys.user_channel(room, user);
        for text in &held {
            match crypto::open(self.cipher.as_deref(), &channel, text) {
                Ok(opened) => {
                    self.deliveries.deliver(room, user, &opened);
                }
                Err(e) => crate::metrics::envelope_dropped(e.label()),
            }
        }
        crate::metrics::gap_filled();
        true
    }
}
