//! A sender's burst of relays in one script call.
//!
//! A session hands over every frame its client had already sent when it reads
//! the socket (up to a bound), and they go to Redis as one call of
//! relay_burst.lua: each member's frames of the burst are numbered, held and
//! published together, in the sender's order. A script runs atomically on the
//! room's slot, so this holds on a single Redis, behind Sentinel and on a Redis
//! Cluster alike, and the sender's order holds as it did with one relay per round
//! trip, at a fraction of the commands, system calls and script calls.
//!
//! Sealed broadcasts (`PAYLOAD_ENCRYPTION_KEY`) read the member list first (see
//! `relay_to_room_sealed`): a burst holding one goes item by item instead.

use redis::{Cmd, ErrorKind, RedisResult, ServerErrorKind};

use super::{duration_ms, now_ms, script_keys, RedisBroker};
use crate::broker::{BrokerError, Outbound, RelayOutcome, Relayed};
use crate::envelope;
use crate::ids::{RoomId, UserId};

impl RedisBroker {
    /// Relays `burst` in order (see the module comment).
    pub(in crate::broker) async fn relay_burst(
        &self,
        room: &RoomId,
        sender: &UserId,
        burst: &[Outbound<'_>],
    ) -> Result<Vec<Result<Relayed, BrokerError>>, BrokerError> {
        let sealed_broadcast =
            |item: &Outbound<'_>| self.cipher.is_some() && matches!(item, Outbound::ToRoom { .. });
        if !burst.iter().any(sealed_broadcast) {
            let replies = self.run_burst(room, sender, burst).await?;
            return Ok(burst
                .iter()
                .zip(replies)
                .map(|(item, n)| Ok(self.relayed(item, n)))
                .collect());
        }
        let mut results = Vec::with_capacity(burst.len());
        for item in burst {
            let result = match (item, &self.cipher) {
                (Outbound::ToRoom { frame }, Some(cipher)) => self
                    .relay_to_room_sealed(cipher, room, sender, frame)
                    .await
                    .map(Relayed::ToRoom),
                _ => self
                    .run_burst(room, sender, std::slice::from_ref(item))
                    .await
                    .map(|replies| self.relayed(item, replies.first().copied().unwrap_or(-1))),
            };
            results.push(result);
        }
        Ok(results)
    }

    /// One call of relay_burst.lua for `burst`; its replies, one per item.
    async fn run_burst(
        &self,
        room: &RoomId,
        sender: &UserId,
        burst: &[Outbound<'_>],
    ) -> Result<Vec<i64>, BrokerError> {
        let script = &self.scripts.burst;
        let mut keys = script_keys::burst(&self.keys, room.as_str());
        // Each directed target's mailbox and channel are declared too: while their
        // slot migrates, Redis then sends the whole call to where the keys are
        // (a broadcast's members are found by the script, as before).
        let mut targets: Vec<&str> = Vec::new();
        for item in burst {
            if let Outbound::ToUser { target, .. } = item {
                if !targets.contains(target) {
                    targets.push(target);
                    keys.push(self.keys.mailbox(room.as_str(), target));
                    keys.push(self.keys.user_channel(room.as_str(), target));
                }
            }
        }
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(now_ms())
            .arg(self.resume.buffer)
            .arg(duration_ms(self.resume.hold))
            .arg(self.keys.room_channel_prefix(room.as_str()))
            .arg(self.keys.room_mailbox_prefix(room.as_str()))
            .arg(sender.as_str());
        for item in burst {
            match item {
                Outbound::ToUser { target, frame } => {
                    let envelope = envelope::frame(frame);
                    // Sealed for the target's channel when encryption is on; the
                    // channel's name is only built then.
                    let envelope = match self.cipher {
                        Some(_) => {
                            let channel = self.keys.user_channel(room.as_str(), target);
                            self.seal(&channel, envelope)
                        }
                        None => envelope,
                    };
                    command.arg(*target).arg(envelope);
                }
                Outbound::ToRoom { frame } => {
                    command.arg("").arg(envelope::frame(frame));
                }
            }
        }
        let op = "relay";
        let mut reply = self.call(op, &command).await?;
        if matches!(&reply, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)) {
            // Redis lost its scripts (restarted, flushed, or a replica promoted).
            let (generation, mut conn) =
                self.note(op, self.relay.get().await.map_err(BrokerError::from))?;
            if let Err(e) = script.load_async(&mut conn).await {
                self.relay.failed(generation, &e);
                return self.note(op, Err(BrokerError::from(e)));
            }
            reply = self.call(op, &command).await?;
        }
        let replies = self.note(op, reply.map_err(BrokerError::from))?;
        if replies.len() != burst.len() {
            return Err(BrokerError::Reply(format!(
                "{} replies to a burst of {}",
                replies.len(),
                burst.len()
            )));
        }
        Ok(replies)
    }

    /// Sends `command` on the relay connection. `Ok(Err(_))`: Redis answered with
    /// an error; `Err(_)`: it did not answer (the connection is replaced when needed).
    async fn call(
        &self,
        op: &'static str,
        command: &Cmd,
    ) -> Result<RedisResult<Vec<i64>>, BrokerError> {
        let (generation, mut conn) =
            self.note(op, self.relay.get().await.map_err(BrokerError::from))?;
        let started = std::time::Instant::now();
        let result = command.query_async::<Vec<i64>>(&mut conn).await;
        crate::metrics::redis_op(op, started.elapsed());
        match result {
            Ok(replies) => Ok(Ok(replies)),
            Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => Ok(Err(e)),
            Err(e) => {
                self.relay.failed(generation, &e);
                self.note(op, Err(BrokerError::from(e)))
            }
        }
    }

    /// What one script reply means for its item.
    fn relayed(&self, item: &Outbound<'_>, n: i64) -> Relayed {
        match item {
            Outbound::ToUser { .. } => Relayed::ToUser(match n {
                n if n < 0 => RelayOutcome::NotInRoom,
                // Held in its mailbox: a detached member (or one whose node died and
                // is about to be detached) gets it when it resumes.
                0 if self.resume.grace.is_zero() => RelayOutcome::NotConnected,
                _ => RelayOutcome::Delivered,
            }),
            Outbound::ToRoom { .. } => Relayed::ToRoom(usize::try_from(n).unwrap_or(0)),
        }
    }
}
