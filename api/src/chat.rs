//! The messaging operations both the HTTP routes and the WebSocket ops perform: authorise
//! against the read models, enforce limits, then hand the command to ingest.

use std::time::Duration;

use futures_util::future::BoxFuture;

use serde::{Deserialize, Serialize};
use switchboard_ingest::Origin;
use switchboard_projector::store::{Conversation, Message};
use switchboard_schemas::{
    ConversationId, MediaId, MessageId, MessageSent, Position, Topic, UserId,
};

use crate::claims::{self, RETRY_WINDOW};
use crate::error::ApiError;
use crate::limits::{self, Limit};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub conversation_id: ConversationId,
    pub client_msg_id: String,
    pub body: String,
    #[serde(default)]
    pub reply_to: Option<MessageId>,
    /// Uploads of the same conversation to carry, in order.
    #[serde(default)]
    pub attachments: Vec<MediaId>,
}

/// What a send is answered with; a retried send gets the first send's answer.
#[derive(Debug, Serialize)]
pub struct Sent {
    pub message_id: MessageId,
    pub token: String,
    pub duplicate: bool,
}

/// What any other accepted command is answered with.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub token: String,
}

impl From<Position> for Accepted {
    fn from(position: Position) -> Accepted {
        Accepted { token: position.to_string() }
    }
}

/// Waits until the read models reflect the write at `after`, a consistency token.
pub async fn wait_for(state: &AppState, after: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = after else { return Ok(()) };
    let position: Position = token
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("bad consistency token: {e}")))?;
    wait_for_position(state, position).await
}

pub async fn wait_for_position(state: &AppState, position: Position) -> Result<(), ApiError> {
    state
        .progress
        .wait_for(position, state.config.consistency_timeout.0)
        .await
        .map_err(|e| ApiError::not_caught_up(e.to_string()))
}

/// A consistency token for something the read models already hold: the last applied position
/// of the partition `key` lives in.
pub fn applied_token(state: &AppState, topic: Topic, key: &str) -> String {
    let partition = Topic::partition_for(key.as_bytes(), state.ingest.log().partitions(topic));
    let next = state.progress.current().get(topic, partition).unwrap_or(0);
    Position { topic, partition, offset: next.saturating_sub(1) }.to_string()
}

/// Waits (bounded) until the read models hold everything logged so far under `key`: for a check
/// that must not miss an event that was acknowledged a moment ago, perhaps to another device.
pub async fn catch_up_with(state: &AppState, topic: Topic, key: &str) -> Result<(), ApiError> {
    let partition = Topic::partition_for(key.as_bytes(), state.ingest.log().partitions(topic));
    let end = state.ingest.log().end_offsets(topic).await?;
    match end.get(partition as usize) {
        Some(&next) if next > 0 => {
            wait_for_position(state, Position { topic, partition, offset: next - 1 }).await
        }
        _ => Ok(()),
    }
}

/// Succeeds if `caller` is a member; to anyone else the conversation does not exist.
pub async fn ensure_member(
    state: &AppState,
    caller: UserId,
    id: ConversationId,
) -> Result<(), ApiError> {
    let known = state.hub.memberships().is_member(id, caller, &state.progress);
    let member = match known {
        Some(member) => member,
        None => state.store.is_member(id, caller).await?,
    };
    match member {
        true => Ok(()),
        false => Err(ApiError::not_found("conversation")),
    }
}

/// The conversation, if `caller` is a member; to anyone else it does not exist.
pub async fn member_conversation(
    state: &AppState,
    caller: UserId,
    id: ConversationId,
) -> Result<Conversation, ApiError> {
    match state.store.conversation(id).await? {
        Some(conversation) if conversation.members.contains(&caller) => Ok(conversation),
        _ => Err(ApiError::not_found("conversation")),
    }
}

pub async fn send(
    state: &AppState,
    caller: UserId,
    trace: &str,
    request: SendRequest,
) -> Result<Sent, ApiError> {
    submit(state, caller, trace, request).await?.await
}

/// A send past its checks: its message is in the log's hands, or it was answered without one.
pub type Sending = BoxFuture<'static, Result<Sent, ApiError>>;

/// Checks and claims a send and hands its message to the log; the returned future answers it
/// once the message is durable. Messages of sends submitted one after another are logged in that
/// order, so a socket may submit its next send before this one is answered.
pub async fn submit(
    state: &AppState,
    caller: UserId,
    trace: &str,
    request: SendRequest,
) -> Result<Sending, ApiError> {
    limits::check(state, Limit::Messages, &caller.to_string()).await?;
    state.ingest.check_message(&request.client_msg_id, &request.body)?;
    state.ingest.check_attachments(&request.attachments)?;
    ensure_member(state, caller, request.conversation_id).await?;
    if let Some(original) = request.reply_to {
        existing_message(state, request.conversation_id, original).await?;
    }
    ensure_uploads(state, request.conversation_id, &request.attachments).await?;

    // The claim first: a retry of a send in flight finds it, and a claim is let go only once the
    // read models hold its message (see `claims`), so a retry that takes the claim afresh finds
    // any earlier send in the read models — including one from before a restart.
    let claim_key = claims::key(caller, request.conversation_id, &request.client_msg_id);
    let message_id = MessageId(state.ingest.next_id());
    let in_flight = message_id.to_string();
    let claimed = match state.coordination.claim(&claim_key, &in_flight, RETRY_WINDOW).await {
        Ok(None) => true,
        Ok(Some(existing)) => {
            match first_send(state, &request, &claim_key, &in_flight, existing).await? {
                Some(sent) => return Ok(answered(sent)),
                None => true,
            }
        }
        // Without shared state, the read-model checks before and after the append are the guard:
        // the projector keeps the first of two sends of one client id, delivery pushes only
        // that one, and the answer names it (see `settled`).
        Err(error) => {
            tracing::warn!(%error, "send claim unavailable");
            false
        }
    };
    let mut alive = claims::InFlight::new(claimed.then(|| claim_key.clone()), in_flight);
    match alive.during(&*state.coordination, stored_send(state, caller, &request)).await {
        Ok(None) => {}
        // Nothing new was logged: let a retry try again.
        Ok(Some(sent)) => {
            release_if(state, claimed, &claim_key).await;
            return Ok(answered(sent));
        }
        Err(error) => {
            release_if(state, claimed, &claim_key).await;
            return Err(error);
        }
    }
    let request_key = (request.conversation_id, request.client_msg_id.clone());
    let event = MessageSent {
        conversation_id: request.conversation_id,
        message_id,
        sender: caller,
        client_msg_id: request.client_msg_id,
        body: request.body,
        reply_to: request.reply_to,
        attachments: request.attachments,
    };
    let logging = state.ingest.send_message(&Origin::user(caller, trace), event);
    let state = state.clone();
    Ok(Box::pin(async move {
        let position = match alive.during(&*state.coordination, logging).await {
            Ok((position, _)) => position,
            // The log may have taken it all the same (a timeout): a retry must look in the log
            // before it sends again.
            Err(error) => {
                if claimed
                    && let Err(claim_error) =
                        state.coordination.update_claim(&claim_key, UNSETTLED, RETRY_WINDOW).await
                {
                    tracing::warn!(error = %claim_error, "could not mark a failed send unsettled");
                }
                return Err(error.into());
            }
        };
        if !claimed {
            return settled(&state, caller, &request_key, message_id, position).await;
        }
        let token = position.to_string();
        let done = format!("{message_id} {token}");
        if let Err(error) = state.coordination.update_claim(&claim_key, &done, RETRY_WINDOW).await {
            tracing::warn!(%error, "could not record the finished send for retries");
        }
        state.claims.hold(position, claim_key);
        metrics::counter!("messages_sent_total").increment(1);
        Ok(Sent { message_id, token, duplicate: false })
    }))
}

/// A send answered before anything was logged.
fn answered(sent: Sent) -> Sending {
    Box::pin(std::future::ready(Ok(sent)))
}

async fn release_if(state: &AppState, claimed: bool, claim_key: &str) {
    if claimed {
        let _ = state.coordination.release_claims(&[claim_key]).await;
    }
}

/// The claim of a send whose append failed without saying whether the log took it.
const UNSETTLED: &str = "unsettled";

/// The answer to a send made without a claim (the presence backend is down): once the read
/// models hold it, the message they kept for its client id, which is an earlier send's when this
/// one was a retry. Sends are slower so while claims are unavailable, and answer truly.
async fn settled(
    state: &AppState,
    caller: UserId,
    request: &(ConversationId, String),
    message_id: MessageId,
    position: Position,
) -> Result<Sent, ApiError> {
    let token = position.to_string();
    let fresh = Sent { message_id, token: token.clone(), duplicate: false };
    if let Err(error) = wait_for_position(state, position).await {
        tracing::warn!(message = %error.message, "a send without a claim answered unchecked");
        metrics::counter!("messages_sent_total").increment(1);
        return Ok(fresh);
    }
    let (conversation, client_msg_id) = request;
    match state.store.message_by_client_id(*conversation, caller, client_msg_id).await? {
        Some(kept) if kept.id != message_id => {
            Ok(Sent { message_id: kept.id, token, duplicate: true })
        }
        _ => {
            metrics::counter!("messages_sent_total").increment(1);
            Ok(fresh)
        }
    }
}

/// The answer to a retry of a send the read models already hold.
async fn stored_send(
    state: &AppState,
    caller: UserId,
    request: &SendRequest,
) -> Result<Option<Sent>, ApiError> {
    let conversation = request.conversation_id;
    let stored = state.store.message_by_client_id(conversation, caller, &request.client_msg_id);
    Ok(stored.await?.map(|message| Sent {
        message_id: message.id,
        token: applied_token(state, Topic::Messages, &conversation.to_string()),
        duplicate: true,
    }))
}

/// Answers a retry from the first send's claim, waiting (bounded) while that send is in flight.
/// `None` once this send holds the claim, as `in_flight`: the first send let it go without an
/// answer, or left it unchanged for [`claims::IN_FLIGHT`], so its node died mid-send.
async fn first_send(
    state: &AppState,
    request: &SendRequest,
    claim_key: &str,
    in_flight: &str,
    mut claimed: String,
) -> Result<Option<Sent>, ApiError> {
    let started = tokio::time::Instant::now();
    let mut changed = started;
    loop {
        if let Some((id, token)) = claimed.split_once(' ') {
            let message_id = id.parse().map_err(|_| ApiError::internal("corrupt send claim"))?;
            return Ok(Some(Sent { message_id, token: token.to_owned(), duplicate: true }));
        }
        // The first send's append failed, so the log holds its message or never will: no need
        // to wait for it.
        let settled = claimed == UNSETTLED;
        if settled || changed.elapsed() >= claims::IN_FLIGHT {
            if state
                .coordination
                .replace_claim(claim_key, &claimed, in_flight, RETRY_WINDOW)
                .await?
            {
                break;
            }
        } else if started.elapsed() >= state.config.consistency_timeout.0 {
            return Err(ApiError::conflict(
                "a send with this client_msg_id is still in progress; retry shortly",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        match state.coordination.claim(claim_key, in_flight, RETRY_WINDOW).await? {
            Some(value) if value == claimed => {}
            Some(value) => {
                claimed = value;
                changed = tokio::time::Instant::now();
            }
            None => break,
        }
    }
    // Whatever the first send logged is in the log by now: it failed and let go, or it was
    // projected and let go (the read models answer), or its node died. Once the read models hold
    // everything logged, the check that follows finds it.
    let conversation = request.conversation_id.to_string();
    if let Err(error) = catch_up_with(state, Topic::Messages, &conversation).await {
        let _ = state.coordination.release_claims(&[claim_key]).await;
        return Err(error);
    }
    Ok(None)
}

/// The message, waiting (bounded) for the projection to catch up with the log when it is not
/// there yet: a client may answer a pushed message before the read models hold it.
async fn existing_message(
    state: &AppState,
    conversation: ConversationId,
    id: MessageId,
) -> Result<Message, ApiError> {
    if let Some(message) = state.store.message(conversation, id).await? {
        return Ok(message);
    }
    catch_up_with(state, Topic::Messages, &conversation.to_string()).await?;
    state.store.message(conversation, id).await?.ok_or_else(|| ApiError::not_found("message"))
}

/// Succeeds if every one of `ids` is a completed upload of `conversation`, waiting (bounded) for
/// the projection as [`existing_message`] does: a client attaches what it has just uploaded.
async fn ensure_uploads(
    state: &AppState,
    conversation: ConversationId,
    ids: &[MediaId],
) -> Result<(), ApiError> {
    let mut missing = Vec::new();
    for &id in ids {
        if !is_upload_of(state, conversation, id).await? {
            missing.push(id);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    catch_up_with(state, Topic::Messages, &conversation.to_string()).await?;
    for id in missing {
        if !is_upload_of(state, conversation, id).await? {
            return Err(ApiError::not_found(format!("media {id} of this conversation")));
        }
    }
    Ok(())
}

async fn is_upload_of(
    state: &AppState,
    conversation: ConversationId,
    id: MediaId,
) -> Result<bool, ApiError> {
    Ok(state.store.media(id).await?.is_some_and(|media| media.conversation_id == conversation))
}

/// Only the sender may change a message, and nobody once it is deleted. The check waits
/// (bounded) for the read models to hold every change logged to the conversation so far: a
/// delete acknowledged a moment ago, perhaps to another device, refuses an edit after it.
async fn own_message(
    state: &AppState,
    caller: UserId,
    conversation: ConversationId,
    message: MessageId,
) -> Result<(), ApiError> {
    ensure_member(state, caller, conversation).await?;
    catch_up_with(state, Topic::Messages, &conversation.to_string()).await?;
    match state.store.message(conversation, message).await? {
        Some(m) if m.deleted => Err(ApiError::not_found("message")),
        Some(m) if m.sender == caller => Ok(()),
        Some(_) => Err(ApiError::forbidden("only the sender may change a message")),
        None => Err(ApiError::not_found("message")),
    }
}

pub async fn edit(
    state: &AppState,
    caller: UserId,
    trace: &str,
    conversation: ConversationId,
    message: MessageId,
    body: &str,
) -> Result<Accepted, ApiError> {
    limits::check(state, Limit::Edits, &caller.to_string()).await?;
    own_message(state, caller, conversation, message).await?;
    let origin = Origin::user(caller, trace);
    Ok(state.ingest.edit_message(&origin, conversation, message, body).await?.into())
}

pub async fn delete(
    state: &AppState,
    caller: UserId,
    trace: &str,
    conversation: ConversationId,
    message: MessageId,
) -> Result<Accepted, ApiError> {
    limits::check(state, Limit::Edits, &caller.to_string()).await?;
    own_message(state, caller, conversation, message).await?;
    let origin = Origin::user(caller, trace);
    Ok(state.ingest.delete_message(&origin, conversation, message).await?.into())
}

pub async fn mark_read(
    state: &AppState,
    caller: UserId,
    trace: &str,
    conversation: ConversationId,
    message: MessageId,
) -> Result<Accepted, ApiError> {
    limits::check(state, Limit::Receipts, &caller.to_string()).await?;
    ensure_member(state, caller, conversation).await?;
    existing_message(state, conversation, message).await?;
    let origin = Origin::user(caller, trace);
    Ok(state.ingest.mark_read(&origin, conversation, caller, message).await?.into())
}

pub async fn typing(
    state: &AppState,
    caller: UserId,
    trace: &str,
    conversation: ConversationId,
    active: bool,
) -> Result<Accepted, ApiError> {
    limits::check(state, Limit::Typing, &caller.to_string()).await?;
    ensure_member(state, caller, conversation).await?;
    let origin = Origin::user(caller, trace);
    Ok(state.ingest.typing(&origin, caller, conversation, active).await?.into())
}
