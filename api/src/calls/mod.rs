//! Calls: 1:1 calls that ring, group call rooms, and the WebRTC signalling between participants.
//!
//! Who may do what is checked against the call read models. The races read models cannot settle
//! (two devices accepting at once, an accept against the ring timeout, two invites for one
//! callee) are settled by claims in the presence backend, which every API node and the ring
//! timer share; the first claim wins:
//!
//! - `call-line:{user}` holds the call a user is in, ringing or talking: inviting a user whose
//!   line is held gets `busy`, and nobody can be in two calls;
//! - `call-outcome:{call}` holds how a ringing call was settled: accepted on one device,
//!   declined, cancelled or missed. Whatever comes second gets `call_not_ringing`;
//! - `call-ended:{call}` is claimed by whoever ends an answered call, so it ends once;
//! - `call-room:{conversation}` holds the open room of a conversation, so it has one.
//!
//! Outcomes the clock or an absence decides (missed, disconnected, an emptied room) are the
//! [`timer`]'s.

pub mod ice;
pub mod timer;

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use switchboard_ingest::Origin;
use switchboard_projector::store::{Call, CallKind, CallState};
use switchboard_schemas::{
    CallAccepted, CallBusy, CallDeclined, CallEnded, CallId, CallInvited, CallMedia,
    ConversationId, ParticipantJoined, ParticipantLeft, Payload, RoomStarted, SignalKind,
    SignalRelayed, Topic, UserId,
};

use crate::calls::ice::IceServer;
use crate::chat::{self, Accepted};
use crate::error::ApiError;
use crate::limits::{self, Limit};
use crate::state::AppState;

/// How long a line stays claimed. Whoever logs the end of a call frees its lines (the ring timer
/// for calls that ring out), so this only matters when that node dies in between.
const LINE_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// How long the claims of a call's outcome are kept: past any retry of the same request.
const OUTCOME_TTL: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    pub callee: UserId,
    pub media: CallMedia,
    /// The conversation the call belongs to; by default the direct one of the two users.
    #[serde(default)]
    pub conversation_id: Option<ConversationId>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRef {
    pub call_id: CallId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRequest {
    pub conversation_id: ConversationId,
    pub media: CallMedia,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub call_id: CallId,
    pub to_user: UserId,
    pub kind: SignalKind,
    /// The SDP or ICE candidate, passed through untouched.
    pub payload: String,
}

/// What starting a call or room is answered with.
#[derive(Debug, Serialize)]
pub struct Started {
    pub call_id: CallId,
    pub token: String,
    /// The ICE servers for this participant's peer connections.
    pub ice_servers: Vec<IceServer>,
}

/// What answering a call or joining a room is answered with.
#[derive(Debug, Serialize)]
pub struct Entered {
    pub token: String,
    /// The ICE servers for this participant's peer connections.
    pub ice_servers: Vec<IceServer>,
}

fn ice_servers(state: &AppState, user: UserId) -> Vec<IceServer> {
    state.config.ice_servers().for_user(user, SystemTime::now())
}

fn line(user: UserId) -> String {
    format!("call-line:{user}")
}

fn outcome(call: CallId) -> String {
    format!("call-outcome:{call}")
}

fn ended_key(call: CallId) -> String {
    format!("call-ended:{call}")
}

fn room_of(conversation: ConversationId) -> String {
    format!("call-room:{conversation}")
}

pub async fn invite(
    state: &AppState,
    caller: UserId,
    trace: &str,
    request: InviteRequest,
) -> Result<Started, ApiError> {
    limits::check(state, Limit::Calls, &caller.to_string()).await?;
    let callee = request.callee;
    if callee == caller {
        return Err(ApiError::invalid("you cannot call yourself"));
    }
    let conversation = match request.conversation_id {
        Some(conversation) => conversation,
        None => state
            .store
            .direct_conversation(caller, callee)
            .await?
            .ok_or_else(|| ApiError::not_found("conversation with that user"))?,
    };
    // Only people who share the conversation may call each other; to anyone else it is not there.
    chat::ensure_member(state, caller, conversation).await?;
    chat::ensure_member(state, callee, conversation)
        .await
        .map_err(|_| ApiError::not_found("user in that conversation"))?;

    let call_id = CallId(state.ingest.next_id());
    let origin = Origin::user(caller, trace);
    if state.coordination.claim(&line(caller), &call_id.to_string(), LINE_TTL).await?.is_some() {
        return Err(ApiError::already_in_call());
    }
    if state.coordination.claim(&line(callee), &call_id.to_string(), LINE_TTL).await?.is_some() {
        release_lines(state, &[caller]).await;
        let busy =
            CallBusy { call_id, user_id: callee, caller: Some(caller), media: Some(request.media) };
        // The attempt goes into both histories; the caller is told at once either way.
        if let Err(error) = state.ingest.append(&origin, busy.into()).await {
            tracing::warn!(%error, "busy call not logged");
        }
        return Err(ApiError::busy());
    }
    let invited = CallInvited {
        call_id,
        caller,
        callee,
        media: request.media,
        conversation_id: Some(conversation),
    };
    match state.ingest.append(&origin, invited.into()).await {
        Ok(position) => {
            metrics::counter!("calls_started_total", "kind" => "direct").increment(1);
            Ok(Started {
                call_id,
                token: position.to_string(),
                ice_servers: ice_servers(state, caller),
            })
        }
        Err(error) => {
            release_lines(state, &[caller, callee]).await;
            Err(error.into())
        }
    }
}

/// The callee answers on the device of session `session`.
pub async fn accept(
    state: &AppState,
    user: UserId,
    session: &str,
    call_id: CallId,
) -> Result<Entered, ApiError> {
    let call = ringing_for(state, user, call_id).await?;
    settle(state, &call, &format!("accepted {session}")).await?;
    let accepted = CallAccepted { call_id, user_id: user, session_id: session.to_owned() };
    let position = state.ingest.append(&Origin::user(user, session), accepted.into()).await?;
    let held = call_id.to_string();
    for party in &call.involved {
        if let Err(error) = state.coordination.update_claim(&line(*party), &held, LINE_TTL).await {
            tracing::warn!(%error, "line of an answered call not extended");
        }
    }
    Ok(Entered { token: position.to_string(), ice_servers: ice_servers(state, user) })
}

pub async fn decline(
    state: &AppState,
    user: UserId,
    trace: &str,
    call_id: CallId,
) -> Result<Accepted, ApiError> {
    let call = ringing_for(state, user, call_id).await?;
    settle(state, &call, "declined").await?;
    let declined = CallDeclined { call_id, user_id: user };
    finish(state, &call, Origin::user(user, trace), declined.into(), &outcome(call_id)).await
}

/// Ends a call for `user`: the caller cancels a ringing call, the callee declines it, either
/// hangs up an answered one, and a room participant leaves the room.
pub async fn end(
    state: &AppState,
    user: UserId,
    trace: &str,
    call_id: CallId,
) -> Result<Accepted, ApiError> {
    let mut call = call_of(state, user, call_id).await?;
    if call.state == CallState::Ringing {
        // An answer may be logged but not projected yet: hanging up must not cancel it.
        chat::catch_up_with(state, Topic::Calls, &call_id.to_string()).await?;
        call = call_of(state, user, call_id).await?;
    }
    match (call.kind, call.state) {
        (_, CallState::Ended) => Err(ApiError::call_ended()),
        (CallKind::Room, _) => leave(state, user, trace, call_id).await,
        (CallKind::Direct, CallState::Ringing) if call.callee == Some(user) => {
            decline(state, user, trace, call_id).await
        }
        (CallKind::Direct, CallState::Ringing) => {
            match claim_outcome(state, call_id, "cancelled").await? {
                None => {
                    let ended = CallEnded { call_id, reason: "cancelled".to_owned() };
                    let origin = Origin::user(user, trace);
                    finish(state, &call, origin, ended.into(), &outcome(call_id)).await
                }
                // Answered this very moment: the caller hangs up on an answered call.
                Some(first) if first.starts_with("accepted") => {
                    hang_up(state, user, trace, &call).await
                }
                Some(first) => Err(not_ringing(first.split(' ').next())),
            }
        }
        (CallKind::Direct, CallState::Active) => hang_up(state, user, trace, &call).await,
    }
}

async fn hang_up(
    state: &AppState,
    user: UserId,
    trace: &str,
    call: &Call,
) -> Result<Accepted, ApiError> {
    let key = ended_key(call.id);
    if state.coordination.claim(&key, "hangup", OUTCOME_TTL).await?.is_some() {
        return Err(ApiError::call_ended());
    }
    let ended = CallEnded { call_id: call.id, reason: "hangup".to_owned() };
    finish(state, call, Origin::user(user, trace), ended.into(), &key).await
}

pub async fn start_room(
    state: &AppState,
    user: UserId,
    session: &str,
    request: RoomRequest,
) -> Result<Started, ApiError> {
    limits::check(state, Limit::Calls, &user.to_string()).await?;
    let conversation = request.conversation_id;
    chat::ensure_member(state, user, conversation).await?;
    let call_id = CallId(state.ingest.next_id());
    let room_key = room_of(conversation);
    if let Some(open) = state.coordination.claim(&room_key, &call_id.to_string(), LINE_TTL).await? {
        // A room whose end the timer has logged but not yet unclaimed does not count.
        let open_room = match open.parse().map(CallId) {
            Ok(id) => fresh_call(state, id, Call::is_live).await?.filter(Call::is_live),
            Err(_) => None,
        };
        if let Some(room) = open_room {
            return Err(ApiError::conflict(format!(
                "a room is already open in this conversation: join call {}",
                room.id
            )));
        }
        state.coordination.update_claim(&room_key, &call_id.to_string(), LINE_TTL).await?;
    }
    let origin = Origin::user(user, session);
    let started = RoomStarted { call_id, conversation_id: conversation, media: request.media };
    if let Err(error) = state.ingest.append(&origin, started.into()).await {
        let _ = state.coordination.release_claims(&[&room_key]).await;
        return Err(error.into());
    }
    metrics::counter!("calls_started_total", "kind" => "room").increment(1);
    let entered = enter_room(state, user, session, call_id).await?;
    Ok(Started { call_id, token: entered.token, ice_servers: entered.ice_servers })
}

pub async fn join_room(
    state: &AppState,
    user: UserId,
    session: &str,
    call_id: CallId,
) -> Result<Entered, ApiError> {
    limits::check(state, Limit::Calls, &user.to_string()).await?;
    // The participant count decides: read it with every join logged so far applied. Joins
    // racing each other to the last place may still both get in.
    let room =
        fresh_call(state, call_id, |_| false).await?.ok_or_else(|| ApiError::not_found("call"))?;
    let Some(conversation) = room.conversation_id.filter(|_| room.kind == CallKind::Room) else {
        return Err(ApiError::not_found("call"));
    };
    chat::ensure_member(state, user, conversation)
        .await
        .map_err(|_| ApiError::not_found("call"))?;
    if !room.is_live() {
        return Err(ApiError::call_ended());
    }
    let limit = state.config.max_room_participants;
    if !room.participants.contains(&user) && room.participants.len() >= limit {
        return Err(ApiError::room_full(limit));
    }
    enter_room(state, user, session, call_id).await
}

async fn enter_room(
    state: &AppState,
    user: UserId,
    session: &str,
    call_id: CallId,
) -> Result<Entered, ApiError> {
    let ours = call_id.to_string();
    match state.coordination.claim(&line(user), &ours, LINE_TTL).await? {
        Some(held) if held != ours => return Err(ApiError::already_in_call()),
        _ => {}
    }
    let joined = ParticipantJoined { call_id, user_id: user, session_id: session.to_owned() };
    match state.ingest.append(&Origin::user(user, session), joined.into()).await {
        Ok(position) => {
            Ok(Entered { token: position.to_string(), ice_servers: ice_servers(state, user) })
        }
        Err(error) => {
            release_lines(state, &[user]).await;
            Err(error.into())
        }
    }
}

async fn leave(
    state: &AppState,
    user: UserId,
    trace: &str,
    call_id: CallId,
) -> Result<Accepted, ApiError> {
    release_lines(state, &[user]).await;
    let left = ParticipantLeft { call_id, user_id: user };
    Ok(state.ingest.append(&Origin::user(user, trace), left.into()).await?.into())
}

/// Relays a WebRTC signal to another participant of a live call.
pub async fn signal(
    state: &AppState,
    user: UserId,
    trace: &str,
    request: SignalRequest,
) -> Result<Accepted, ApiError> {
    limits::check(state, Limit::Signals, &user.to_string()).await?;
    let (from, to) = (user, request.to_user);
    let both_in = |call: &Call| {
        let live = call.live_users();
        from != to && live.contains(&from) && live.contains(&to)
    };
    // To a stranger the call does not exist, whatever its state.
    let call = fresh_call(state, request.call_id, both_in).await?;
    if !call.as_ref().is_some_and(both_in) {
        return Err(ApiError::not_found("call"));
    }
    let relayed = SignalRelayed {
        call_id: request.call_id,
        from_user: from,
        to_user: to,
        kind: request.kind,
        payload: request.payload,
    };
    Ok(state.ingest.append(&Origin::user(user, trace), relayed.into()).await?.into())
}

/// The call, once the read models show it satisfying `ready`, or as it is when they have
/// caught up with the call's partition and it still does not: a client may act on a call it
/// heard of in a push before the projection has it.
async fn fresh_call(
    state: &AppState,
    id: CallId,
    ready: impl Fn(&Call) -> bool,
) -> Result<Option<Call>, ApiError> {
    if let Some(call) = state.store.call(id).await?.filter(|call| ready(call)) {
        return Ok(Some(call));
    }
    chat::catch_up_with(state, Topic::Calls, &id.to_string()).await?;
    Ok(state.store.call(id).await?)
}

/// A call `user` is part of; to anyone else it does not exist.
async fn call_of(state: &AppState, user: UserId, id: CallId) -> Result<Call, ApiError> {
    let involved = |call: &Call| call.involved.contains(&user) || call.participants.contains(&user);
    match fresh_call(state, id, involved).await? {
        Some(call) if involved(&call) => Ok(call),
        _ => Err(ApiError::not_found("call")),
    }
}

/// A 1:1 call ringing for `user`.
async fn ringing_for(state: &AppState, user: UserId, id: CallId) -> Result<Call, ApiError> {
    let call = call_of(state, user, id).await?;
    if call.kind != CallKind::Direct || call.callee != Some(user) {
        return Err(ApiError::not_found("call"));
    }
    if call.state != CallState::Ringing {
        return Err(not_ringing(call.outcome.map(|outcome| outcome.name())));
    }
    Ok(call)
}

/// Claims the outcome of a ringing call; a second claimant learns what the first decided.
async fn settle(state: &AppState, call: &Call, decision: &str) -> Result<(), ApiError> {
    match claim_outcome(state, call.id, decision).await? {
        None => Ok(()),
        Some(first) => Err(not_ringing(first.split(' ').next())),
    }
}

/// The outcome claimed first, if another claim came before this one.
async fn claim_outcome(
    state: &AppState,
    call: CallId,
    decision: &str,
) -> Result<Option<String>, ApiError> {
    Ok(state.coordination.claim(&outcome(call), decision, OUTCOME_TTL).await?)
}

fn not_ringing(how: Option<&str>) -> ApiError {
    ApiError::call_not_ringing(match how {
        Some("accepted" | "answered") => "the call was answered on another device",
        Some("declined") => "the call was declined",
        Some("missed") => "the call was not answered in time",
        Some("cancelled") => "the caller hung up",
        _ => "the call is no longer ringing",
    })
}

/// Frees the lines of `call`, then logs the event that ends it. Lines first: the users hear of
/// the end as soon as it is logged and may call again at once. If it cannot be logged, the claim
/// `decision` that settled the call is dropped too, so that the request can be tried again.
async fn finish(
    state: &AppState,
    call: &Call,
    origin: Origin,
    event: Payload,
    decision: &str,
) -> Result<Accepted, ApiError> {
    release_lines(state, &call.involved).await;
    match state.ingest.append(&origin, event).await {
        Ok(position) => Ok(position.into()),
        Err(error) => {
            let _ = state.coordination.release_claims(&[decision]).await;
            Err(error.into())
        }
    }
}

async fn release_lines(state: &AppState, users: &[UserId]) {
    let lines: Vec<String> = users.iter().map(|&user| line(user)).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    if let Err(error) = state.coordination.release_claims(&lines).await {
        tracing::warn!(%error, ?users, "call lines not released; they expire by themselves");
    }
}

/// The open room of a conversation is no longer held once it closed.
pub async fn release_room(state: &AppState, conversation: ConversationId) {
    if let Err(error) = state.coordination.release_claims(&[&room_of(conversation)]).await {
        tracing::warn!(%error, "room claim not released; it expires by itself");
    }
}
