//! Resume in the Redis engine (PROTOCOL.md section 11): detaching a member whose
//! connection ended without its decision, taking its session back on any node,
//! and ending graces cluster-wide.
//!
//! A detached member keeps its record in its room (with the Unix ms its grace
//! ends) and gets an entry in `P cluster:{detached}`, which every node sweeps, so
//! the grace ends even when the node that detached it is gone. A resume is, like a
//! join, ordered single-slot steps: this node records the session in its run, the
//! room step (resume_room.lua) checks the token and the mailbox and moves the
//! record, the user step (move_user.lua) moves the user's hash, and the old
//! session is told to close without a word wherever it still is.

use std::time::Duration;

use super::member_record::MemberRecord;
use super::{duration_ms, now_ms, records_to_members, script_keys, with_keys, RedisBroker};
use crate::broker::{BrokerError, LeaveRequest, ResumeRequest, ResumeResult, Resumed};
use crate::crypto;
use crate::envelope::{self, KickReason};
use crate::ids::{RoomId, SessionId};
use crate::protocol::LeaveReason;

/// Longest wait of a resume for the node that still drains the old connection to
/// relay what that client sent before its close (then it detaches the member).
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How often that wait looks again.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Graces ended per sweep, so one sweep stays short.
const SWEEP_BATCH: usize = 200;

impl RedisBroker {
    /// Detaches `req`'s session (see [`crate::broker::Broker::detach`]).
    pub(in crate::broker) async fn detach(&self, req: &LeaveRequest) -> Result<bool, BrokerError> {
        if self.resume.grace.is_zero() {
            return self.leave(req).await;
        }
        let session = req.session.to_string();
        let detached = self
            .detach_session(&req.room, req.user.as_str(), &session)
            .await;
        self.forget(req.session).await;
        detached
    }

    /// The steps of a detach: the grace's end goes into the cluster-wide index
    /// first, then the record is marked (a crash in between leaves an index entry
    /// whose guarded end finds nothing to do). Returns false when the record is
    /// another session's.
    pub(super) async fn detach_session(
        &self,
        room: &RoomId,
        user: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        let until = now_ms().saturating_add(duration_ms(self.resume.grace));
        let entry = detached_entry(room.as_str(), user, session);
        let index = self.keys.detached();
        self.pooled("detach_index", async |conn| {
            redis::cmd("ZADD")
                .arg(&index)
                .arg(until)
                .arg(&entry)
                .query_async::<i64>(&mut *conn)
                .await?;
            Ok(())
        })
        .await?;
        let detached: i64 = self
            .pooled("detach", async |conn| {
                let mut invocation = with_keys(
                    &self.scripts.detach_room,
                    script_keys::detach_room(&self.keys, room.as_str()),
                );
                let detached: i64 = invocation
                    .arg(user)
                    .arg(session)
                    .arg(until)
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(detached)
            })
            .await?;
        if detached != 1 {
            self.unindex_detached(&entry).await;
            return Ok(false);
        }
        Ok(true)
    }

    async fn unindex_detached(&self, entry: &str) {
        let index = self.keys.detached();
        let _ = self
            .pooled("detach_index", async |conn| {
                redis::cmd("ZREM")
                    .arg(&index)
                    .arg(entry)
                    .query_async::<i64>(&mut *conn)
                    .await?;
                Ok(())
            })
            .await;
    }

    /// Tells the cluster this run drains (`draining` in its heartbeat hash), so a
    /// resume of one of its sessions elsewhere waits for the drain of that one.
    pub(in crate::broker) async fn mark_draining(&self) {
        let run = self.incarnation.current().to_string();
        let key = self.keys.node(self.node_id.as_str());
        let result = self
            .pooled("draining", async |conn| {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg("draining")
                    .arg(&run)
                    .query_async::<i64>(&mut *conn)
                    .await?;
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not mark this node draining; resumes elsewhere will not wait for its drain");
        }
    }

    /// Waits (bounded) while `user`'s session in `room` is still connected to a
    /// node that drains: that node relays what the client sent before its close,
    /// then detaches it; a resume before that could overtake those frames.
    async fn wait_for_drain(&self, room: &RoomId, user: &str) {
        let started = std::time::Instant::now();
        while started.elapsed() < DRAIN_WAIT {
            let Ok(Some(record)) = self.member_record(room, user).await else {
                return;
            };
            if record.detached_until != 0 || record.node == self.node_id.as_str() {
                return;
            }
            let key = self.keys.node(&record.node);
            let beat = self
                .pooled("draining", async |conn| {
                    let beat: (Option<String>, Option<String>) = redis::cmd("HMGET")
                        .arg(&key)
                        .arg("run")
                        .arg("draining")
                        .query_async(&mut *conn)
                        .await?;
                    Ok(beat)
                })
                .await;
            match beat {
                Ok((Some(run), Some(draining))) if run == draining => {}
                _ => return,
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        tracing::info!("resume: the old connection's node is still draining; resuming anyway");
    }

    async fn member_record(
        &self,
        room: &RoomId,
        user: &str,
    ) -> Result<Option<MemberRecord>, BrokerError> {
        let key = self.keys.room_members(room.as_str());
        let text: Option<String> = self
            .pooled("resume_check", async |conn| {
                let text: Option<String> = redis::cmd("HGET")
                    .arg(&key)
                    .arg(user)
                    .query_async(&mut *conn)
                    .await?;
                Ok(text)
            })
            .await?;
        Ok(text.as_deref().and_then(MemberRecord::decode))
    }

    /// Takes a member's session over (see [`crate::broker::Broker::resume`]).
    pub(in crate::broker) async fn resume(
        &self,
        req: &ResumeRequest,
    ) -> Result<ResumeResult, BrokerError> {
        let started = std::time::Instant::now();
        let result = self.resume_steps(req).await;
        crate::metrics::redis_op("resume", started.elapsed());
        result
    }

    async fn resume_steps(&self, req: &ResumeRequest) -> Result<ResumeResult, BrokerError> {
        let (room, user) = (req.room.as_str(), req.user.as_str());
        let session = req.session.to_string();
        // Recorded before it is visible, as a join is: if this node dies from here
        // on, the sweep finds the session. The record waits for nothing, so it goes
        // out with the drain check's first read.
        let (_, recorded) = tokio::join!(
            self.wait_for_drain(&req.room, user),
            self.record_session(&req.run, user, &session, room)
        );
        recorded?;
        let reply: Result<Vec<String>, BrokerError> = self
            .pooled("resume", async |conn| {
                let mut invocation = with_keys(
                    &self.scripts.resume_room,
                    script_keys::join_room(&self.keys, room, user),
                );
                let reply: Vec<String> = invocation
                    .arg(user)
                    .arg(&req.ask.digest)
                    .arg(req.ask.last_seq)
                    .arg(&session)
                    .arg(self.node_id.as_str())
                    .arg(&req.new_digest)
                    .arg(now_ms())
                    .arg(self.ttl_secs)
                    .invoke_async(&mut *conn)
                    .await?;
                Ok(reply)
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                self.forget(req.session).await;
                return Err(e);
            }
        };
        let Some(resumed) = self.parse_resumed(&req.room, user, &reply)? else {
            self.forget(req.session).await;
            return Ok(ResumeResult::Refused);
        };
        let (resumed, previous) = resumed;
        let moved = self
            .move_user(
                user,
                &previous.session.to_string(),
                &session,
                &previous.user(user, room),
            )
            .await?;
        if !moved {
            // A newer join of the user owns it: undo the room step, then close.
            self.leave_room_if(&req.room, user, &session, LeaveReason::Replaced, 0)
                .await?;
            self.forget(req.session).await;
            return Ok(ResumeResult::Superseded);
        }
        let old = previous.session;
        // Independent of each other: one round trip.
        let entry = detached_entry(room, user, &old.to_string());
        let (kicked, ()) = tokio::join!(
            self.publish(&req.room, user, envelope::kick(old, KickReason::Resumed)),
            self.unindex_detached(&entry)
        );
        kicked?;
        Ok(ResumeResult::Resumed(resumed))
    }

    /// Decodes resume_room.lua's reply: `None` when refused, else what the session
    /// needs and the record it took over.
    fn parse_resumed(
        &self,
        room: &RoomId,
        user: &str,
        reply: &[String],
    ) -> Result<Option<(Resumed, MemberRecord)>, BrokerError> {
        let bad = || BrokerError::Reply("resume_room: bad reply".into());
        match reply.first().map(String::as_str) {
            Some("!refused") => return Ok(None),
            Some("ok") => {}
            _ => return Err(bad()),
        }
        let previous = reply
            .get(1)
            .and_then(|r| MemberRecord::decode(r))
            .ok_or_else(bad)?;
        let count: usize = reply.get(2).and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let members_end = 3usize.checked_add(count).ok_or_else(bad)?;
        let flat = reply.get(3..members_end).ok_or_else(bad)?;
        let mut members = records_to_members(flat, room)?;
        crate::broker::sort_members(&mut members);
        let channel = self.keys.user_channel(room.as_str(), user);
        let mut replay = Vec::with_capacity(reply.len() - members_end);
        for text in &reply[members_end..] {
            match crypto::open(self.cipher.as_deref(), &channel, text) {
                Ok(opened) => replay.push(opened.into_owned()),
                // Left out, it leaves a gap, which the session's gap check turns
                // into a close rather than show it to the client.
                Err(e) => {
                    crate::metrics::envelope_dropped(e.label());
                    tracing::warn!(%e, "a held frame does not open; dropped");
                }
            }
        }
        Ok(Some((
            Resumed {
                me: previous.user(user, room.as_str()),
                members,
                stream: previous.stream,
                replay,
                previous: previous.session,
            },
            previous,
        )))
    }

    /// Ends the graces that are over: each such member leaves its room with
    /// `user_left` `timeout` (the guarded script decides, so of several nodes
    /// sweeping only one announces), then its user hash goes.
    pub(super) async fn end_graces(&self) -> Result<usize, BrokerError> {
        let now = now_ms();
        let index = self.keys.detached();
        let due: Vec<String> = self
            .pooled("graces", async |conn| {
                let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg(&index)
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(SWEEP_BATCH)
                    .query_async(&mut *conn)
                    .await?;
                Ok(due)
            })
            .await?;
        let mut ended = 0;
        for entry in due {
            if let Some((room, user, session)) = parse_detached_entry(&entry) {
                if self
                    .leave_room_if(&room, user, session, LeaveReason::Timeout, now)
                    .await?
                {
                    self.leave_user(user, session).await?;
                    crate::metrics::left(LeaveReason::Timeout.as_str());
                    tracing::info!(room_id = %room, user_id = user, "resume grace ended; the member left");
                    ended += 1;
                }
            }
            self.unindex_detached(&entry).await;
        }
        Ok(ended)
    }
}

/// The member of `P cluster:{detached}` for one detached session.
fn detached_entry(room: &str, user: &str, session: &str) -> String {
    format!("{room} {user} {session}")
}

fn parse_detached_entry(entry: &str) -> Option<(RoomId, &str, &str)> {
    let mut fields = entry.split(' ');
    let room = RoomId::parse(fields.next()?).ok()?;
    let user = fields.next()?;
    let session = fields.next()?;
    SessionId::parse(session)?;
    fields.next().is_none().then_some((room, user, session))
}
