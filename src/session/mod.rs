//! One task per WebSocket: join, then relay until the client leaves or the node
//! closes the session, then leave.
//!
//! Within the task the reader (parse, validate, relay) and the writer (drain the
//! outbound queue into the socket) run concurrently, so a client that reads slowly
//! never stalls its own sending, and its queue bound closes it instead. The reader
//! awaits each relay before taking the next frame, which keeps per-sender order.

mod admission;
mod halves;
mod rate;
mod relay;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{FutureExt, SinkExt, StreamExt};
use tracing::Instrument;

use crate::broker::{
    Delivery, JoinRequest, JoinResult, LeaveRequest, Member, ResumeRequest, ResumeResult,
};
use crate::ids::{RoomId, SessionId, UserId};
use crate::outbox::{self, CloseReason, Inbox, Outbox};
use crate::protocol::{
    close_code, echo_fields, error_frame, now_rfc3339_millis, room_users_frame, shutdown_frame,
    ErrorCode, LeaveReason, Role, SessionInfo, User,
};
use crate::registry::{Numbering, SessionHandle};
use crate::resume_token::{self, IssuedToken, ResumeAsk};
use crate::state::{AppState, ConnectionSlot};
pub use admission::Credentials;

/// How long the last frames (error, close) may take to reach a client that stopped reading.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent a close frame.
    ClientClosed,
    /// The connection broke or the client vanished.
    ClientGone,
    /// A frame over `MAX_MESSAGE_BYTES`.
    TooBig,
    /// A text frame that was not UTF-8, or another protocol violation.
    ProtocolViolation,
    /// The node asked the session to close.
    Closed(CloseReason),
}

/// Everything one way of ending decides for the client and the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ending {
    /// The `error` frame sent before the close, if any.
    error: Option<ErrorCode>,
    /// The close code and its text (also the `error` frame's message); `None` when
    /// the client closed or vanished first, so there is nobody to tell.
    close: Option<(u16, &'static str)>,
    /// The `user_left` reason, or `None` when the room must not hear of it
    /// (a replaced session: its successor's join already told the room).
    leave: Option<LeaveReason>,
    /// Whether the member did not decide this (PROTOCOL.md section 11): it is
    /// detached, resumable, instead of leaving (when resume is on; `leave` is
    /// the reason it leaves with otherwise, and when its grace ends it is `timeout`).
    detach: bool,
}

impl End {
    /// The one table from each way a session ends to its error code, close code,
    /// text and leave reason, so the three can never disagree.
    const fn ending(self) -> Ending {
        use CloseReason as C;
        use ErrorCode as E;
        use LeaveReason as L;
        const fn row(
            error: Option<ErrorCode>,
            close: Option<(u16, &'static str)>,
            leave: Option<LeaveReason>,
        ) -> Ending {
            Ending {
                error,
                close,
                leave,
                detach: false,
            }
        }
        const fn detached(ending: Ending) -> Ending {
            Ending {
                detach: true,
                ..ending
            }
        }
        match self {
            End::ClientClosed => row(None, None, Some(L::Left)),
            End::ClientGone => detached(row(None, None, Some(L::Left))),
            End::TooBig => row(
                None,
                Some((close_code::TOO_BIG, "message too big")),
                Some(L::Left),
            ),
            End::ProtocolViolation => row(None, Some((1007, "invalid frame")), Some(L::Left)),
            End::Closed(C::Replaced) => row(
                Some(E::Replaced),
                Some((close_code::REPLACED, "replaced by a newer connection")),
                None,
            ),
            End::Closed(C::Kicked) => row(
                Some(E::Kicked),
                Some((close_code::KICKED, "kicked")),
                Some(L::Kicked),
            ),
            End::Closed(C::SlowConsumer) => detached(row(
                Some(E::SlowConsumer),
                Some((close_code::SLOW_CONSUMER, "outbound queue overflowed")),
                Some(L::Timeout),
            )),
            End::Closed(C::Shutdown) => detached(row(
                Some(E::Shutdown),
                Some((close_code::GOING_AWAY, "node shutting down; reconnect")),
                Some(L::Shutdown),
            )),
            End::Closed(C::Timeout) => detached(row(
                Some(E::Timeout),
                Some((close_code::TIMEOUT, "no answer to pings")),
                Some(L::Timeout),
            )),
            End::Closed(C::Lost) => detached(row(
                Some(E::Unavailable),
                Some((
                    close_code::TRY_AGAIN_LATER,
                    "messages for this connection were lost; reconnect",
                )),
                Some(L::Timeout),
            )),
            // The member took its session to another connection: this one just ends.
            End::Closed(C::Resumed) => row(None, None, None),
            End::Closed(C::RateLimited) => row(
                Some(E::RateLimited),
                Some((close_code::RATE_LIMITED, "sustained rate-limit abuse")),
                Some(L::Left),
            ),
            // The survivor that declared this node dead already removed or
            // detached its members: nothing is left to do in the store.
            End::Closed(C::NodeExpired) => row(
                Some(E::Unavailable),
                Some((
                    close_code::TRY_AGAIN_LATER,
                    "this node lost its cluster membership; reconnect",
                )),
                None,
            ),
        }
    }
}

/// Serves one accepted WebSocket for `user` in `room` until it ends.
///
/// The session's future is boxed here, once, with nothing around it: axum's
/// upgrade task awaits it behind a pointer, so that task stays small, and an
/// async wrapper would have held a second copy of the arguments next to it.
pub fn run(
    socket: WebSocket,
    state: AppState,
    room: RoomId,
    user: UserId,
    credentials: Credentials,
    slot: ConnectionSlot,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let session = SessionId::new();
    let span = tracing::info_span!(
        "session",
        room_id = %room,
        user_id = %user,
        session_id = %session,
        node_id = %state.config.node_id,
    );
    // Built here, not in `serve`: an async fn keeps its arguments for its whole
    // life, and the socket and credentials are only needed to start.
    let opening = Box::pin(open(
        socket,
        state.clone(),
        room.clone(),
        user.clone(),
        session,
        credentials,
    ));
    Box::pin(serve(opening, state, room, user, session, slot).instrument(span))
}

/// The start of a session ([`open`]), boxed.
type Opening = Pin<Box<dyn Future<Output = Option<Opened>> + Send>>;

/// The session's future lives as long as the connection and is as large as its
/// largest state, so its two phases that are large and short-lived run boxed:
/// the start ([`open`]: admission, join or resume, the first frame) and the
/// relay loop (`pump`), as do the awaits of the ending (leave, farewell). An idle
/// session then holds this small future and the pump's box.
///
/// An `async move` block rather than an `async fn`: an async fn's future holds
/// each argument twice (the argument and the local it is moved into), this one
/// once.
// The lint's suggestion (an async fn) is exactly what this avoids: see above.
#[allow(clippy::manual_async_fn)]
fn serve(
    opening: Opening,
    state: AppState,
    room: RoomId,
    user: UserId,
    session: SessionId,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send {
    async move {
        let Some(opened) = opening.await else {
            return;
        };
        let Opened {
            socket,
            outbox,
            mut inbox,
            role,
            sent,
        } = opened;
        // A socket whose first frame failed stays open until the session ends, as
        // it did before the start was split off. (Boxed: this future keeps a slot for
        // every local it ever holds, and a socket is a few hundred bytes.)
        let mut unsent = None;
        let end = if sent {
            Box::pin(pump(
                socket, &state, &room, &user, role, &outbox, &mut inbox,
            ))
            .await
        } else {
            unsent = Some(socket);
            (End::ClientGone, None)
        };
        let (end, socket) = end;
        inbox.seal();
        // The ending runs boxed: its awaits would otherwise size this future,
        // which every idle session holds.
        let ended = Ended {
            end,
            socket,
            unsent,
            slot,
            role,
        };
        Box::pin(finish(ended, &state, &room, &user, session, &outbox)).await;
    }
}

/// How the relay loop left a session, for [`finish`].
struct Ended {
    end: End,
    /// The socket's halves, when a farewell can still be written.
    socket: Option<FarewellSocket>,
    /// A socket whose first frame failed: kept open until the session ends.
    unsent: Option<Box<WebSocket>>,
    slot: ConnectionSlot,
    role: Role,
}

/// Ends a session: the farewell, the registry, the store (leave or detach).
async fn finish(
    ended: Ended,
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    session: SessionId,
    outbox: &Outbox,
) {
    let Ended {
        end,
        socket,
        unsent,
        slot,
        role,
    } = ended;
    let ending = end.ending();
    let farewell_to = |socket: FarewellSocket, close: u16, text: &'static str| {
        farewell(
            socket,
            ending.error,
            close,
            text,
            state,
            room,
            user,
            role,
            outbox,
        )
    };
    // A drained client gets its farewell first: what it sent before it read the
    // close is relayed before the member is detached (section 11). Any other
    // ending is settled in the store first, so the room hears of it at once.
    let mut socket = match (socket, ending.close) {
        (Some(socket), Some((close, text))) if end == End::Closed(CloseReason::Shutdown) => {
            Box::pin(farewell_to(socket, close, text)).await;
            None
        }
        (socket, _) => socket,
    };
    // The client is gone or being told goodbye: its place under MAX_CONNECTIONS
    // is free now, not after the Redis cleanup below (several round trips).
    drop(slot);

    // Off the registry before leaving Redis: re-registration after a Redis restart
    // works from the registry, and must never write back a session that is leaving.
    Box::pin(forget(state, user, session)).await;
    match (ending.detach, ending.leave) {
        (true, Some(reason)) => Box::pin(detach(state, room, user, session, reason)).await,
        (false, Some(reason)) => Box::pin(leave(state, room, user, session, reason)).await,
        (_, None) => Box::pin(state.broker.forget_session(session)).await,
    }
    if let (Some(socket), Some((close, text))) = (socket.take(), ending.close) {
        Box::pin(farewell_to(socket, close, text)).await;
    }
    drop(unsent);
    tracing::info!(reason = ?end, "disconnected");
}

/// A session that joined (or resumed) and was sent its first frame.
struct Opened {
    /// Boxed so that the futures handing it on hold a pointer, not the socket:
    /// a future keeps a slot for each local it held across an await, even one
    /// moved out since, for its whole life.
    socket: Box<WebSocket>,
    outbox: Outbox,
    inbox: Inbox,
    role: Role,
    /// Whether `room_users` went out (else the client is gone).
    sent: bool,
}

/// Admits, registers and joins (or resumes) the session, then sends it
/// `room_users`. `None` when it was refused (the refusal is sent, and the
/// session is off the registry again).
async fn open(
    mut socket: WebSocket,
    state: AppState,
    room: RoomId,
    user: UserId,
    session: SessionId,
    credentials: Credentials,
) -> Option<Opened> {
    let (state, room, user) = (&state, &room, &user);
    tracing::info!(resume = credentials.resume.is_some(), "connected");
    // The run this session is recorded under. Checked again after the insert below.
    let Some(run) = state.registered_run() else {
        let refusal = admission::STORE_DOWN;
        Box::pin(reject(socket, refusal.code, refusal.close, refusal.text)).await;
        return None;
    };
    let (outbox, inbox) = outbox::channel(state.config.max_queue_bytes, &state.sessions);
    let issued = resume_token::issue();
    let handle = SessionHandle {
        session_id: session,
        room_id: room.clone(),
        outbox: outbox.clone(),
        joined_at: now_rfc3339_millis(),
        role: Role::Peer,
        run,
        resume_digest: issued.digest.clone(),
    };
    // An older local session of this user stays open: if this join wins, the
    // join itself tells that session to close; if it is refused, nothing changed.
    state.registry.insert(user.clone(), handle);
    // The upkeep renews the run before it closes the old run's sessions. Had it
    // renewed between the read above and the insert, its close missed this
    // session: refuse it here. Otherwise any later close sees it.
    if state.incarnation.current() != run {
        tracing::info!("join refused: this node's run was declared dead meanwhile");
        forget(state, user, session).await;
        let refusal = admission::STORE_DOWN;
        Box::pin(reject(socket, refusal.code, refusal.close, refusal.text)).await;
        return None;
    }

    // Subscribe before the join makes the user visible, so a member reacting to
    // `user_joined` at once never sends into the void. Without a resume the room's
    // rules are read meanwhile (a resume skips them: the token stands for the
    // password, unless it fails); both come before anything is written to the
    // store, so a refused connection leaves nothing there.
    let admission = async {
        match credentials.resume {
            Some(_) => None,
            None => Some(admission::admit(state, room, user, &credentials).await),
        }
    };
    let (admitted, subscribed) =
        Box::pin(async { tokio::join!(admission, state.broker.subscribe(room, user)) }).await;
    let mut admitted = match admitted {
        None => None,
        Some(Ok(admitted)) => Some(admitted),
        Some(Err(refusal)) => {
            forget(state, user, session).await;
            Box::pin(reject(socket, refusal.code, refusal.close, refusal.text)).await;
            return None;
        }
    };
    if let Err(e) = subscribed {
        tracing::warn!(error = %e, "join refused: cannot subscribe to the user's channel");
        forget(state, user, session).await;
        let refusal = admission::STORE_DOWN;
        Box::pin(reject(socket, refusal.code, refusal.close, refusal.text)).await;
        return None;
    }

    let start = match &credentials.resume {
        Some(ask) => Box::pin(try_resume(state, room, user, session, run, ask, &issued)).await,
        None => Ok(None),
    };
    let start = match start {
        Ok(Some(resumed)) => resumed,
        Ok(None) => {
            let admitted = match admitted.take() {
                Some(admitted) => Ok(admitted),
                None => Box::pin(admission::admit(state, room, user, &credentials)).await,
            };
            let admitted = match admitted {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    forget(state, user, session).await;
                    Box::pin(reject(socket, refusal.code, refusal.close, refusal.text)).await;
                    return None;
                }
            };
            match Box::pin(join(state, room, user, session, run, &admitted, &issued)).await {
                Ok(joined) => joined,
                Err(refusal) => {
                    forget(state, user, session).await;
                    Box::pin(reject(socket, refusal.code, refusal.close, refusal.text)).await;
                    return None;
                }
            }
        }
        Err(refusal) => {
            forget(state, user, session).await;
            Box::pin(reject(socket, refusal.code, refusal.close, refusal.text)).await;
            return None;
        }
    };

    // Deliveries that arrived meanwhile were held; they are released behind
    // `room_users`: the replay first, then live frames, merged by `seq`, and
    // membership filtered against the snapshot.
    let users: Vec<_> = start.members.iter().map(|(u, _)| u.clone()).collect();
    let info = SessionInfo {
        resume_token: &issued.token,
        resume_seconds: state.config.resume_grace.as_secs(),
        resumed: start.resumed,
    };
    // Fresh TURN credentials with every room_users, a resumed one included.
    let ice = state
        .config
        .ice
        .for_user(user.as_str(), std::time::SystemTime::now());
    let first = room_users_frame(room, &start.me, &users, &info, &ice.servers);
    let activated = state.registry.activate(
        user,
        session,
        &start.me,
        &start.members,
        start.numbering,
        &start.replay,
    );
    if activated == Delivery::Gap {
        state.broker.fill(room, user);
    }
    let role = start.me.role;
    // Nothing of the join is needed from here on: freed now rather than held
    // for the whole life of the connection (the member list alone is a few KiB).
    drop((users, ice, start, issued, credentials, admitted));
    let sent = socket.send(Message::Text(first.into())).await.is_ok();
    Some(Opened {
        socket: Box::new(socket),
        outbox,
        inbox,
        role,
        sent,
    })
}

/// Where a session starts once the store accepted it.
struct Start {
    /// The member as the room sees it.
    me: User,
    /// The other members and their sessions.
    members: Vec<Member>,
    /// Where its `seq` goes on from.
    numbering: Numbering,
    /// Held frames to write first (a resume's).
    replay: Vec<String>,
    /// Whether it resumed a session.
    resumed: bool,
}

/// Tries to take the member's session over. `Ok(None)`: not resumable, the
/// connection joins as usual; `Err`: it is refused.
async fn try_resume(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    session: SessionId,
    run: crate::incarnation::RunId,
    ask: &ResumeAsk,
    issued: &IssuedToken,
) -> Result<Option<Start>, admission::Refusal> {
    let request = ResumeRequest {
        room: room.clone(),
        user: user.clone(),
        session,
        ask: ask.clone(),
        new_digest: issued.digest.clone(),
        run,
    };
    match state.broker.resume(&request).await {
        Ok(ResumeResult::Resumed(resumed)) => {
            crate::metrics::resumed("resumed");
            tracing::info!(
                last_seq = ask.last_seq,
                replayed = resumed.replay.len(),
                previous_session = %resumed.previous,
                "resumed"
            );
            Ok(Some(Start {
                me: resumed.me,
                members: resumed.members,
                numbering: Numbering {
                    stream: resumed.stream,
                    last_seq: ask.last_seq,
                },
                replay: resumed.replay,
                resumed: true,
            }))
        }
        Ok(ResumeResult::Refused) => {
            crate::metrics::resumed("refused");
            tracing::info!("resume refused (token, grace or held messages); joining anew");
            Ok(None)
        }
        Ok(ResumeResult::Superseded) => {
            crate::metrics::resumed("superseded");
            tracing::info!("resume lost the race to a newer connection of the same user");
            Err(admission::SUPERSEDED)
        }
        Err(e) => {
            tracing::warn!(error = %e, "resume failed");
            // The room step may have run with its reply lost: the member is then
            // this session's, which ends here without the member's decision, so it
            // is detached (session-guarded), not removed: the room hears nothing.
            detach(state, room, user, session, LeaveReason::Left).await;
            Err(admission::STORE_DOWN)
        }
    }
}

/// An ordinary join: the member's numbering starts at 1.
async fn join(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    session: SessionId,
    run: crate::incarnation::RunId,
    admitted: &admission::Admitted,
    issued: &IssuedToken,
) -> Result<Start, admission::Refusal> {
    let request = JoinRequest {
        room: room.clone(),
        user: user.clone(),
        session,
        role: admitted.role,
        joined_at: now_rfc3339_millis(),
        max_users: admitted.max_users,
        run,
        resume_digest: issued.digest.clone(),
    };
    let joined = match state.broker.join(&request).await {
        Ok(JoinResult::Joined(joined)) => joined,
        Ok(JoinResult::Full) => {
            tracing::info!("join refused: room full");
            return Err(admission::ROOM_FULL);
        }
        Ok(JoinResult::Superseded) => {
            tracing::info!("join lost the race to a newer connection of the same user");
            return Err(admission::SUPERSEDED);
        }
        Err(e) => {
            tracing::warn!(error = %e, "join failed");
            // The script may have run with its reply lost: undo it (session-guarded).
            leave(state, room, user, session, LeaveReason::Left).await;
            return Err(admission::STORE_DOWN);
        }
    };
    crate::metrics::joined();
    tracing::info!(
        members = joined.members.len(),
        replaced = joined.replaced.is_some(),
        "joined"
    );
    Ok(Start {
        me: request.user_object(),
        members: joined.members,
        numbering: Numbering {
            stream: session,
            last_seq: 0,
        },
        replay: Vec::new(),
        resumed: false,
    })
}

/// Runs reader and writer until one ends or the session is closed. Returns the
/// socket halves reunited when a farewell can still be written.
async fn pump(
    socket: Box<WebSocket>,
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    role: Role,
    outbox: &Outbox,
    inbox: &mut Inbox,
) -> (End, Option<FarewellSocket>) {
    let (mut sink, mut stream) = (*socket).split();
    let closed = inbox.close_token();
    let started = Instant::now();
    // Milliseconds since `started` of the last frame from the client; shared by the
    // two halves of this one task (an atomic because the future must be Send).
    let last_seen = AtomicU64::new(0);
    let ping = state.config.ping_interval;
    let mut limiter = rate::RateLimiter::new(
        state.config.rate_limit,
        state.config.byte_rate_limit,
        started,
    );
    // A write that cannot finish for this long means the client stopped reading.
    // Without it a client that never reads but keeps sending pings (which prove it
    // alive) would park the writer forever.
    let write_stall = 2 * ping;
    // One step of the reader per frame: what the frame asks of the session.
    let mut take = |msg: Result<Message, axum::Error>| -> Step {
        let now = Instant::now();
        state.stats.frame_in();
        last_seen.store(millis_since(started, now), Ordering::Relaxed);
        let data_len = match &msg {
            Ok(Message::Text(t)) => Some(t.len()),
            Ok(Message::Binary(b)) => Some(b.len()),
            _ => None,
        };
        if let Some(len) = data_len {
            match limiter.check(len, now) {
                rate::Verdict::Allow => {}
                rate::Verdict::Drop => {
                    let (id, target) = match &msg {
                        Ok(Message::Text(t)) => echo_fields(t.as_str()),
                        _ => (None, None),
                    };
                    crate::metrics::error_sent(ErrorCode::RateLimited.as_str());
                    return Step::Answer(error_frame(
                        ErrorCode::RateLimited,
                        "over the rate limit; the message was dropped",
                        id,
                        target.as_deref(),
                    ));
                }
                rate::Verdict::Abuse => {
                    outbox.close(CloseReason::RateLimited);
                    return Step::End(End::Closed(CloseReason::RateLimited));
                }
            }
        }
        match msg {
            Ok(Message::Text(text)) => Step::Text(text),
            Ok(Message::Binary(_)) => Step::Answer(error_frame(
                ErrorCode::InvalidMessage,
                "binary frames are not accepted; send JSON text",
                None,
                None,
            )),
            Ok(Message::Ping(_) | Message::Pong(_)) => Step::Nothing,
            Ok(Message::Close(_)) => Step::End(End::ClientClosed),
            Err(e) => Step::End(classify(e)),
        }
    };
    let reader = async {
        let mut texts: Vec<Utf8Bytes> = Vec::new();
        loop {
            // A close request is taken between bursts, never during a relay: a
            // frame the client sent before it was told to close still goes out.
            let mut next = tokio::select! {
                biased;
                _ = closed.cancelled() => return End::Closed(CloseReason::Shutdown),
                msg = async {
                    // Boxed and only when behind: the sleep inside is 100 bytes
                    // that every idle reader would otherwise hold.
                    if lagging(state) {
                        Box::pin(throttle(state)).await;
                    }
                    stream.next().await
                } => msg,
            };
            // This frame and whatever else the client had already sent, up to a
            // bound: their relays go to the store together, in order.
            let (mut bytes, mut frames) = (0, 0);
            let ended = loop {
                let Some(msg) = next.take() else {
                    break Some(End::ClientGone);
                };
                // Every frame counts, pings too: a client flooding pings would
                // otherwise keep this loop going as long as it sends.
                frames += 1;
                match take(msg) {
                    Step::Text(text) => {
                        bytes += text.len();
                        texts.push(text);
                    }
                    Step::Answer(frame) => {
                        relay_boxed(state, room, user, role, outbox, &texts).await;
                        texts.clear();
                        outbox.push(frame);
                    }
                    Step::Nothing => {}
                    Step::End(end) => break Some(end),
                }
                if frames >= READ_BURST_FRAMES || bytes >= READ_BURST_BYTES {
                    break None;
                }
                match stream.next().now_or_never() {
                    Some(msg) => next = msg,
                    None => break None,
                }
            };
            relay_boxed(state, room, user, role, outbox, &texts).await;
            texts.clear();
            if let Some(end) = ended {
                return end;
            }
        }
    };
    let writer = async {
        let mut heartbeat = tokio::time::interval_at((started + ping).into(), ping);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                frame = inbox.recv() => {
                    let Some(frame) = frame else { return End::ClientGone };
                    match tokio::time::timeout(write_stall, write_burst(&mut sink, inbox, frame, state)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return End::ClientGone,
                        Err(_) => return stalled(outbox),
                    }
                }
                _ = heartbeat.tick() => {
                    let silent = millis_since(started, Instant::now())
                        .saturating_sub(last_seen.load(Ordering::Relaxed));
                    if u128::from(silent) > 2 * ping.as_millis() {
                        outbox.close(CloseReason::Timeout);
                        return End::Closed(CloseReason::Timeout);
                    }
                    match tokio::time::timeout(write_stall, sink.send(Message::Ping(Default::default()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return End::ClientGone,
                        Err(_) => return stalled(outbox),
                    }
                }
            }
        }
    };
    // Each half is polled only when its own event fired (halves.rs). Both are
    // dropped at the end of this block, which frees the socket halves they borrow.
    let end = {
        let reader = std::pin::pin!(reader);
        let writer = std::pin::pin!(writer);
        halves::Halves::new(reader, writer).await
    };
    let end = match (end, inbox.close_reason()) {
        // A close request wins over whatever the halves were doing when it came.
        (_, Some(reason)) => End::Closed(reason),
        (end, None) => end,
    };
    let socket = match end {
        End::ClientGone => None,
        End::ClientClosed => {
            // Flush tungstenite's automatic reply to the client's close frame.
            let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, sink.flush()).await;
            None
        }
        _ => Some(FarewellSocket { sink, stream }),
    };
    (end, socket)
}

/// Relays a burst from a future of its own: the broker's calls are several KiB
/// of future, which would otherwise sit in every idle session's reader.
async fn relay_boxed(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    role: Role,
    outbox: &Outbox,
    texts: &[Utf8Bytes],
) {
    Box::pin(relay::handle_burst(state, room, user, role, outbox, texts)).await;
}

/// A subscriber this far behind makes the node's sessions wait before they read
/// more from their clients: well under what fills Redis' pub/sub output buffer
/// (32 MB by default) at the rates a node reaches.
const LAG_LIMIT: Duration = Duration::from_millis(50);
/// Longest wait before one burst, so a lag that does not drop (a publisher's
/// clock far off) slows sessions down but never stops them.
const MAX_THROTTLE: Duration = Duration::from_secs(1);

/// Whether this node's subscriber is so far behind that sessions should wait.
fn lagging(state: &AppState) -> bool {
    state.broker.delivery_lag() > LAG_LIMIT
}

/// Waits while this node's subscriber is behind (bounded; broker/redis/delivery_lag.rs).
async fn throttle(state: &AppState) {
    let started = Instant::now();
    while lagging(state) && started.elapsed() < MAX_THROTTLE {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What one frame read from the client asks of the session.
enum Step {
    /// A text frame: validated and relayed with the rest of its burst.
    Text(Utf8Bytes),
    /// An answer to the client only (after the burst's relays so far).
    Answer(String),
    /// Nothing to do (a ping or pong; tungstenite answers pings itself).
    Nothing,
    /// The session ends.
    End(End),
}

/// Most frames, and bytes, the reader takes from the socket before it relays
/// them: bursts share a round trip to the store, and a bound keeps one
/// client from holding the others' relays back for long.
const READ_BURST_FRAMES: usize = 64;
const READ_BURST_BYTES: usize = 256 * 1024;

/// Most bytes the writer takes from the queue before it flushes the socket once.
const WRITE_BURST_BYTES: usize = 64 * 1024;

/// Writes `first` and whatever else is queued (up to [`WRITE_BURST_BYTES`]),
/// then flushes once: a burst of deliveries costs one system call, not one each.
///
/// The sink is driven by hand (`poll_ready`, then `start_send`) rather than by
/// `feed`: a `Feed` future holds the message while it waits, and this future's
/// size is held by every idle session's writer.
async fn write_burst(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    inbox: &mut Inbox,
    first: outbox::Outgoing,
    state: &AppState,
) -> Result<(), axum::Error> {
    let mut bytes = 0;
    let mut next = Some(first);
    // One clock reading for the burst: it is written out at once.
    let mut now_us = None;
    while let Some(frame) = next {
        bytes += frame.text.len();
        std::future::poll_fn(|cx| sink.poll_ready_unpin(cx)).await?;
        sink.start_send_unpin(Message::Text(frame.text.into()))?;
        state.stats.frame_out();
        if let Some(published) = frame.published_us {
            let now = *now_us.get_or_insert_with(crate::envelope::now_us);
            let age = now.saturating_sub(published);
            crate::metrics::delivered(Duration::from_micros(age));
        }
        next = if bytes < WRITE_BURST_BYTES {
            inbox.try_recv()
        } else {
            None
        };
    }
    std::future::poll_fn(|cx| sink.poll_flush_unpin(cx)).await
}

/// A client whose socket took no bytes for the stall limit: a slow consumer.
fn stalled(outbox: &Outbox) -> End {
    tracing::info!("closing: the client has not read for two ping intervals");
    outbox.close(CloseReason::SlowConsumer);
    End::Closed(CloseReason::SlowConsumer)
}

fn millis_since(start: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

/// The socket's halves, kept for the last frames (and, in a drain, the reads
/// until the client's close reply).
struct FarewellSocket {
    sink: futures::stream::SplitSink<WebSocket, Message>,
    stream: futures::stream::SplitStream<WebSocket>,
}

fn classify(e: axum::Error) -> End {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(err) => match *err {
            tungstenite::Error::Capacity(_) => End::TooBig,
            // The socket's write buffer (replies to pings included) is at its bound.
            tungstenite::Error::WriteBufferFull(_) => End::Closed(CloseReason::SlowConsumer),
            // The TCP connection ended without a close frame: the network dropped
            // it or the client vanished, not the member's decision.
            tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ) => End::ClientGone,
            tungstenite::Error::Utf8(_) | tungstenite::Error::Protocol(_) => End::ProtocolViolation,
            _ => End::ClientGone,
        },
        Err(_) => End::ClientGone,
    }
}

/// Sends the error frame (if any) and the close frame, bounded in time. A drained
/// client's error carries `retry_after_ms`, and what it sent before it read the
/// close is still relayed, until its close reply (section 11).
#[allow(clippy::too_many_arguments)]
async fn farewell(
    mut socket: FarewellSocket,
    code: Option<ErrorCode>,
    close: u16,
    text: &'static str,
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    role: Role,
    outbox: &Outbox,
) {
    if let Some(code) = code {
        crate::metrics::error_sent(code.as_str());
    }
    crate::metrics::closed(close);
    let draining = code == Some(ErrorCode::Shutdown);
    let send = async {
        match code {
            Some(ErrorCode::Shutdown) => {
                let frame = shutdown_frame(text, retry_after_ms());
                socket.sink.send(Message::Text(frame.into())).await?;
            }
            Some(code) => {
                let frame = error_frame(code, text, None, None);
                socket.sink.send(Message::Text(frame.into())).await?;
            }
            None => {}
        }
        socket.sink.send(close_message(close, text)).await
    };
    if !matches!(
        tokio::time::timeout(FINAL_WRITE_TIMEOUT, send).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // The closing handshake: the connection stays until the client's close reply
    // (bounded), so a client that reads late still finds the error and the close
    // code instead of a reset. Only a drained client's frames are still relayed.
    let reads = async {
        while let Some(Ok(msg)) = socket.stream.next().await {
            match msg {
                Message::Text(text) if draining => {
                    relay::handle_text(state, room, user, role, outbox, text.as_str()).await
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    if tokio::time::timeout(CLOSE_REPLY_TIMEOUT, reads)
        .await
        .is_err()
        && draining
    {
        tracing::info!("drain: no close reply from the client in time");
    }
}

/// How long a closed client has to answer the close; during a drain what it
/// sends until then is relayed.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// `retry_after_ms` of a `shutdown` error: random in 0..=1000 per client, so a
/// drained node's clients do not all reconnect at once.
fn retry_after_ms() -> u64 {
    use chacha20poly1305::aead::rand_core::RngCore;
    u64::from(chacha20poly1305::aead::OsRng.next_u32() % 1001)
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Refuses an upgraded connection: one `error` frame, then the close code.
pub async fn reject(mut socket: WebSocket, code: ErrorCode, close: u16, text: &'static str) {
    crate::metrics::error_sent(code.as_str());
    crate::metrics::closed(close);
    let send = async {
        socket
            .send(Message::Text(error_frame(code, text, None, None).into()))
            .await?;
        socket.send(close_message(close, text)).await
    };
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, send).await;
}

/// The member stays, detached, for the grace (or leaves with `reason` when
/// resume is off); failures are logged, never fatal.
async fn detach(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    session: SessionId,
    reason: LeaveReason,
) {
    if state.config.resume_grace.is_zero() {
        return leave(state, room, user, session, reason).await;
    }
    let request = LeaveRequest {
        room: room.clone(),
        user: user.clone(),
        session,
        reason,
    };
    match state.broker.detach(&request).await {
        Ok(true) => {
            crate::metrics::detached(reason.as_str());
            tracing::info!(
                grace_seconds = state.config.resume_grace.as_secs(),
                "detached: resumable until the grace ends"
            );
        }
        Ok(false) => {
            tracing::debug!("detach skipped: the member's state belongs to another session")
        }
        Err(e) => tracing::warn!(error = %e, "detach failed; the keys expire with their TTL"),
    }
}

/// Session-guarded removal from the room; failures are logged, never fatal.
async fn leave(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    session: SessionId,
    reason: LeaveReason,
) {
    let request = LeaveRequest {
        room: room.clone(),
        user: user.clone(),
        session,
        reason,
    };
    match state.broker.leave(&request).await {
        Ok(true) => {
            crate::metrics::left(reason.as_str());
            tracing::info!(reason = reason.as_str(), "left room");
        }
        Ok(false) => tracing::debug!("leave skipped: the user's state belongs to another session"),
        Err(e) => tracing::warn!(error = %e, "leave failed; the keys expire with their TTL"),
    }
}

/// Drops the local session and, if it was the user's last in its room, the
/// user's channel in that room. The unsubscribe is boxed: `serve` awaits this
/// inline, and a Redis future would set the size of every session's task.
async fn forget(state: &AppState, user: &UserId, session: SessionId) {
    if let Some(room) = state.registry.remove(user, session) {
        Box::pin(state.broker.unsubscribe(&room, user)).await;
    }
}
