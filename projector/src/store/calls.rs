//! Calls as the read models keep them: one record per call, a 1:1 call or a group room, folded
//! from the calls topic.
//!
//! A call's events all share its partition (the topic is keyed by call id), so they arrive in the
//! order they happened, and a call's record depends on nothing but them. That makes the fold a
//! pure function of the record and one event, which both stores call: the rules live here once.

use serde::{Deserialize, Serialize};
use switchboard_schemas::{CallId, CallMedia, ConversationId, Event, Payload, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// One caller rings one callee.
    Direct,
    /// A group call room in a conversation: members join and leave.
    Room,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Ringing,
    Active,
    Ended,
}

impl CallState {
    /// The state as clients and stored rows spell it.
    pub fn name(self) -> &'static str {
        match self {
            CallState::Ringing => "ringing",
            CallState::Active => "active",
            CallState::Ended => "ended",
        }
    }
}

/// How a 1:1 call went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallOutcome {
    Answered,
    Declined,
    Missed,
    /// The callee was in another call; nothing rang.
    Busy,
    /// The caller hung up (or went away) before anyone answered.
    Cancelled,
}

impl CallOutcome {
    pub fn name(self) -> &'static str {
        match self {
            CallOutcome::Answered => "answered",
            CallOutcome::Declined => "declined",
            CallOutcome::Missed => "missed",
            CallOutcome::Busy => "busy",
            CallOutcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub id: CallId,
    pub kind: CallKind,
    pub media: CallMedia,
    pub conversation_id: Option<ConversationId>,
    /// Who rang, or who started the room.
    pub initiator: Option<UserId>,
    /// Who was rung; rooms have none.
    pub callee: Option<UserId>,
    pub state: CallState,
    /// How a 1:1 call went, once it is known; rooms have none.
    pub outcome: Option<CallOutcome>,
    /// In the call now: both users of an answered call, a room's participants in the order they
    /// first joined.
    pub participants: Vec<UserId>,
    /// Whose history the call is in: caller and callee, every user who ever joined a room.
    pub involved: Vec<UserId>,
    /// The device that answered, so the callee's other devices know it was answered elsewhere.
    pub answered_session: Option<String>,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// Why it ended: `hangup`, `cancelled`, `disconnected`, `empty`, or the outcome.
    pub end_reason: Option<String>,
    /// Talk time: from the answer (a room: from its start) to the end.
    pub duration_ms: Option<i64>,
}

impl Call {
    fn new(id: CallId, kind: CallKind, media: CallMedia, state: CallState, at: i64) -> Call {
        Call {
            id,
            kind,
            media,
            conversation_id: None,
            initiator: None,
            callee: None,
            state,
            outcome: None,
            participants: Vec::new(),
            involved: Vec::new(),
            answered_session: None,
            started_at: at,
            answered_at: None,
            ended_at: None,
            end_reason: None,
            duration_ms: None,
        }
    }

    fn direct(
        id: CallId,
        caller: Option<UserId>,
        callee: UserId,
        media: CallMedia,
        at: i64,
    ) -> Call {
        Call {
            initiator: caller,
            callee: Some(callee),
            involved: caller.into_iter().chain([callee]).collect(),
            ..Call::new(id, CallKind::Direct, media, CallState::Ringing, at)
        }
    }

    pub fn is_live(&self) -> bool {
        self.state != CallState::Ended
    }

    /// Who the call is live for: both users of a ringing or answered call, a room's participants.
    pub fn live_users(&self) -> &[UserId] {
        match (self.state, self.kind) {
            (CallState::Ended, _) => &[],
            (_, CallKind::Direct) => &self.involved,
            (_, CallKind::Room) => &self.participants,
        }
    }

    fn end(&mut self, at: i64, outcome: Option<CallOutcome>, reason: &str) {
        if self.outcome.is_none() {
            self.outcome = outcome;
        }
        let talk_from = match self.kind {
            CallKind::Direct => self.answered_at,
            CallKind::Room => Some(self.started_at),
        };
        self.duration_ms = talk_from.map(|from| (at - from).max(0));
        self.state = CallState::Ended;
        self.participants.clear();
        self.ended_at = Some(at);
        self.end_reason = Some(reason.to_owned());
    }
}

/// The call after `event`, or `None` when the event changes nothing: it belongs to no call, or
/// its effect is already there (delivery is at least once, so every rule must be idempotent), or
/// it comes too late (an accept after the call ended). The first outcome of a call stands.
pub fn fold(current: Option<&Call>, event: &Event) -> Option<Call> {
    use Payload::*;
    let at = event.meta.occurred_at;
    match (&event.payload, current) {
        (CallInvited(e), None) => {
            let mut call = Call::direct(e.call_id, Some(e.caller), e.callee, e.media, at);
            call.conversation_id = e.conversation_id;
            Some(call)
        }
        (CallBusy(e), None) => {
            let media = e.media.unwrap_or(CallMedia::Audio);
            let mut call = Call::direct(e.call_id, e.caller, e.user_id, media, at);
            call.end(at, Some(CallOutcome::Busy), "busy");
            Some(call)
        }
        (RoomStarted(e), None) => Some(Call {
            conversation_id: Some(e.conversation_id),
            initiator: event.meta.actor,
            ..Call::new(e.call_id, CallKind::Room, e.media, CallState::Active, at)
        }),
        (_, None) => None,
        (_, Some(call)) if !call.is_live() => None,
        (CallBusy(_), Some(call)) => ended(call, at, CallOutcome::Busy, "busy"),
        (CallAccepted(e), Some(call)) if call.state == CallState::Ringing => {
            let mut call = call.clone();
            call.state = CallState::Active;
            call.outcome = Some(CallOutcome::Answered);
            call.answered_at = Some(at);
            call.answered_session = Some(e.session_id.clone());
            call.participants = call.involved.clone();
            Some(call)
        }
        (CallDeclined(_), Some(call)) if call.state == CallState::Ringing => {
            ended(call, at, CallOutcome::Declined, "declined")
        }
        (CallMissed(_), Some(call)) if call.state == CallState::Ringing => {
            ended(call, at, CallOutcome::Missed, "missed")
        }
        (CallEnded(e), Some(call)) => {
            let mut call = call.clone();
            let unanswered = (call.state == CallState::Ringing).then_some(CallOutcome::Cancelled);
            call.end(at, unanswered, &e.reason);
            Some(call)
        }
        (ParticipantJoined(e), Some(call))
            if call.kind == CallKind::Room && !call.participants.contains(&e.user_id) =>
        {
            let mut call = call.clone();
            if !call.involved.contains(&e.user_id) {
                call.involved.push(e.user_id);
            }
            // In the order of `involved`, which only grows: a join applied again after the user
            // left and came back must not move them.
            let Call { participants, involved, .. } = &mut call;
            participants.push(e.user_id);
            participants.sort_by_key(|user| involved.iter().position(|known| known == user));
            Some(call)
        }
        // Leaving is for rooms: on a 1:1 call it would change nothing the first time round and
        // drop a participant when applied again after the answer.
        (ParticipantLeft(e), Some(call))
            if call.kind == CallKind::Room && call.participants.contains(&e.user_id) =>
        {
            let mut call = call.clone();
            call.participants.retain(|user| *user != e.user_id);
            Some(call)
        }
        _ => None,
    }
}

fn ended(call: &Call, at: i64, outcome: CallOutcome, reason: &str) -> Option<Call> {
    let mut call = call.clone();
    call.end(at, Some(outcome), reason);
    Some(call)
}

/// The call an event of the calls topic is about.
pub fn call_of(payload: &Payload) -> Option<CallId> {
    use Payload::*;
    Some(match payload {
        CallInvited(e) => e.call_id,
        CallRinging(e) => e.call_id,
        CallAccepted(e) => e.call_id,
        CallDeclined(e) => e.call_id,
        CallBusy(e) => e.call_id,
        CallMissed(e) => e.call_id,
        CallEnded(e) => e.call_id,
        RoomStarted(e) => e.call_id,
        ParticipantJoined(e) => e.call_id,
        ParticipantLeft(e) => e.call_id,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use switchboard_schemas::{
        CallAccepted, CallEnded, CallInvited, CallMissed, EventMeta, ParticipantJoined,
        ParticipantLeft, RoomStarted,
    };

    use super::*;

    fn event(at: i64, actor: i64, payload: impl Into<Payload>) -> Event {
        let meta = EventMeta {
            event_id: format!("e-{at}"),
            occurred_at: at,
            actor: Some(UserId(actor)),
            trace_id: "t".into(),
        };
        Event { meta, payload: payload.into() }
    }

    fn run(events: &[Event]) -> Option<Call> {
        let mut call = None;
        for event in events {
            if let Some(next) = fold(call.as_ref(), event) {
                call = Some(next);
            }
        }
        call
    }

    const CALL: CallId = CallId(9);

    fn room_started() -> RoomStarted {
        RoomStarted { call_id: CALL, conversation_id: ConversationId(4), media: CallMedia::Audio }
    }

    fn join(user: i64) -> ParticipantJoined {
        ParticipantJoined { call_id: CALL, user_id: UserId(user), session_id: "s".into() }
    }

    fn leave(user: i64) -> ParticipantLeft {
        ParticipantLeft { call_id: CALL, user_id: UserId(user) }
    }

    #[test]
    fn the_first_outcome_stands_and_an_answered_call_times_its_talk() {
        let invited = CallInvited {
            call_id: CALL,
            caller: UserId(1),
            callee: UserId(2),
            media: CallMedia::Video,
            conversation_id: None,
        };
        let accepted = CallAccepted { call_id: CALL, user_id: UserId(2), session_id: "s".into() };
        let call = run(&[
            event(100, 1, invited),
            event(150, 2, accepted),
            event(160, 0, CallMissed { call_id: CALL }),
            event(1_150, 1, CallEnded { call_id: CALL, reason: "hangup".into() }),
        ])
        .unwrap();
        assert_eq!(call.outcome, Some(CallOutcome::Answered));
        assert_eq!(call.duration_ms, Some(1_000));
        assert_eq!(call.answered_session.as_deref(), Some("s"));
        assert!(call.live_users().is_empty());
    }

    #[test]
    fn a_room_tracks_participants_and_replaying_its_events_changes_nothing() {
        let events = [
            event(10, 1, room_started()),
            event(11, 1, join(1)),
            event(12, 2, join(2)),
            event(13, 1, leave(1)),
            event(14, 3, join(3)),
        ];
        let once = run(&events).unwrap();
        assert_eq!(once.participants, [UserId(2), UserId(3)]);
        assert_eq!(once.involved, [UserId(1), UserId(2), UserId(3)]);
        let mut twice = Some(once.clone());
        for event in &events {
            if let Some(next) = fold(twice.as_ref(), event) {
                twice = Some(next);
            }
        }
        assert_eq!(twice.unwrap(), once);
    }

    #[test]
    fn participants_are_listed_in_the_order_they_first_joined() {
        let call = run(&[
            event(10, 1, room_started()),
            event(11, 1, join(1)),
            event(12, 2, join(2)),
            event(13, 1, leave(1)),
            event(14, 1, join(1)),
        ])
        .unwrap();
        assert_eq!(call.participants, [UserId(1), UserId(2)], "coming back keeps one's place");
    }

    /// A replay after the answer must not drop the caller: leaving is for rooms.
    #[test]
    fn leaving_is_for_rooms() {
        let invited = CallInvited {
            call_id: CALL,
            caller: UserId(1),
            callee: UserId(2),
            media: CallMedia::Audio,
            conversation_id: None,
        };
        let left = event(11, 1, leave(1));
        let accepted = CallAccepted { call_id: CALL, user_id: UserId(2), session_id: "s".into() };
        let answered = run(&[event(10, 1, invited), left.clone(), event(12, 2, accepted)]).unwrap();
        assert_eq!(answered.participants, [UserId(1), UserId(2)]);
        assert_eq!(fold(Some(&answered), &left), None, "a leave applied again changes nothing");
    }
}
