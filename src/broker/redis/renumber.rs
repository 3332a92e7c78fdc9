//! Numbering a frame again after Redis lost its latest counts. A failover to a
//! replica that had not yet received the last writes of its master takes back the
//! member's counter by a few: the next frames for the member get `seq` numbers its
//! session already delivered. The session tells them from duplicates (registry.rs)
//! and asks for them to be numbered anew: this relays the same envelope to the
//! member again with a floor, so the relay script first raises the counter to the
//! last `seq` delivered. The frame then arrives above it, like any other.
//!
//! The envelopes are relayed one after another by a task of its own, beside the
//! dispatch loop, in the order they were found, so frames numbered again keep
//! their order among themselves (a frame numbered correctly meanwhile may come
//! before them). The original (wrongly numbered) copy stays in the mailbox, where
//! a later read skips it as already delivered.

use std::sync::{Arc, OnceLock};

use redis::Script;
use tokio::sync::mpsc;

use super::keys::Keys;
use super::script_keys;
use crate::broker::ResumeSettings;
use crate::crypto::{self, PayloadCipher};
use crate::envelope;

/// Relays frames numbered again.
pub(super) struct Renumberer {
    relayer: Relayer,
    keys: Keys,
    cipher: Option<Arc<PayloadCipher>>,
    /// The worker's queue, started with the first frame.
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

/// One frame to relay again: room, user, floor, sealed envelope.
type Job = (String, String, u64, String);

/// What the worker needs to relay.
#[derive(Clone)]
struct Relayer {
    commands: super::pool::CommandPool,
    keys: Keys,
    /// relay.lua, as the engine runs it (mailbox functions, PUBLISH or SPUBLISH).
    relay: Script,
    resume: ResumeSettings,
}

impl Renumberer {
    pub(super) fn new(
        commands: super::pool::CommandPool,
        keys: Keys,
        cipher: Option<Arc<PayloadCipher>>,
        relay: Script,
        resume: ResumeSettings,
    ) -> Self {
        Self {
            relayer: Relayer {
                commands,
                keys: keys.clone(),
                relay,
                resume,
            },
            keys,
            cipher,
            queue: OnceLock::new(),
        }
    }

    /// Numbers the frame of `numbered` (an opened `S` envelope for `user` in
    /// `room`) again above `floor`, and publishes it to the member.
    pub(super) fn request(&self, room: &str, user: &str, floor: u64, numbered: &str) {
        let Some((seq, _, inner)) = envelope::split_numbered(numbered) else {
            return;
        };
        crate::metrics::renumbered();
        tracing::warn!(
            user_id = user,
            seq,
            floor,
            "redis numbered a frame with a seq this member already has (it lost its latest counts, e.g. in a failover); numbering it again"
        );
        let channel = self.keys.user_channel(room, user);
        let sealed = crypto::seal(self.cipher.as_deref(), &channel, inner.to_owned());
        let queue = self.queue.get_or_init(|| {
            let (queue, jobs) = mpsc::unbounded_channel();
            tokio::spawn(self.relayer.clone().work(jobs));
            queue
        });
        // Only fails once the node stops.
        let _ = queue.send((room.to_owned(), user.to_owned(), floor, sealed));
    }
}

impl Relayer {
    async fn work(self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        while let Some((room, user, floor, sealed)) = jobs.recv().await {
            if let Err(e) = self.relay(&room, &user, floor, sealed).await {
                tracing::error!(user_id = %user, error = %e, "could not number a frame again; the member misses it");
            }
        }
    }

    async fn relay(
        &self,
        room: &str,
        user: &str,
        floor: u64,
        sealed: String,
    ) -> Result<(), redis::RedisError> {
        let mut conn = self
            .commands
            .get()
            .await
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
        let mut invocation = self.relay.prepare_invoke();
        for key in script_keys::relay(&self.keys, room, user) {
            invocation.key(key);
        }
        invocation
            .arg(user)
            .arg(sealed)
            .arg(super::now_ms())
            .arg(self.resume.buffer)
            .arg(super::duration_ms(self.resume.hold))
            .arg(floor);
        invocation.invoke_async::<i64>(&mut *conn).await?;
        Ok(())
    }
}
