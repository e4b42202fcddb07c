//! The key layout of the embedded read models: one fjall keyspace per [`Table`], composite keys
//! built from fixed-width ids so that prefix and range scans come back in a useful order.
//!
//! Ids are `i64`. They are stored big-endian with the sign bit flipped, which makes byte order
//! equal numeric order for every `i64` (a plain big-endian `i64` would sort negative ids after
//! positive ones). Message ids are time-ordered, so a conversation's messages sit in send order
//! under the conversation's prefix and "newest first, older than X" is a reverse range scan.

/// Width of an encoded id.
pub(super) const ID_LEN: usize = 8;

/// Encodes an id so that byte order is numeric order.
pub(super) fn id(value: i64) -> [u8; ID_LEN] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

/// Decodes the id at `bytes[at..at + ID_LEN]`, if the key is long enough.
pub(super) fn id_at(bytes: &[u8], at: usize) -> Option<i64> {
    let raw: [u8; ID_LEN] = bytes.get(at..at + ID_LEN)?.try_into().ok()?;
    Some((u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
}

/// A key made of ids, in order.
pub(super) fn ids(parts: &[i64]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.len() * ID_LEN);
    for &part in parts {
        key.extend_from_slice(&id(part));
    }
    key
}

/// The key under which the checkpoint is kept in [`Table::Meta`].
pub(super) const CHECKPOINT: &[u8] = b"checkpoint";

/// Every keyspace of the store. The value of each is JSON (see `store::rows`), except where noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Table {
    /// `"checkpoint"` → the cursor's text form. Not a read model, so left out of dumps.
    Meta,
    /// `user` → the registered user.
    Users,
    /// lower-cased handle → the user holding it.
    Handles,
    /// `conversation` → what the conversation topic says about it (kind, title, creator).
    Conversations,
    /// `conversation, user` → the member's join order.
    Members,
    /// `user, conversation` → `null`: the index an inbox is read from.
    Memberships,
    /// `conversation` → message count and last message, folded from the messages topic alone.
    Stats,
    /// `conversation, message` → the message.
    Messages,
    /// `conversation, sender, client_msg_id` → the message id a send was stored under.
    ClientIds,
    /// `smaller user, larger user` → their direct conversation.
    Directs,
    /// `conversation, user` → the user's read marker.
    Reads,
    /// `user` → when their last session closed.
    LastSeen,
    /// `call` → the call (see `store::calls`).
    Calls,
    /// `user, call` → `null`: the calls in a user's history.
    CallHistory,
    /// `user, call` → `null`: the calls live for a user now.
    LiveCalls,
    /// `conversation, call` → `null`: the rooms open in a conversation now.
    LiveRooms,
    /// `conversation, user` → the last location the user shared with the conversation.
    Locations,
    /// `media` → the upload: its conversation, uploader, type, size, name and object key.
    Media,
}

impl Table {
    pub(super) const ALL: [Table; 18] = [
        Table::Meta,
        Table::Users,
        Table::Handles,
        Table::Conversations,
        Table::Members,
        Table::Memberships,
        Table::Stats,
        Table::Messages,
        Table::ClientIds,
        Table::Directs,
        Table::Reads,
        Table::LastSeen,
        Table::Calls,
        Table::CallHistory,
        Table::LiveCalls,
        Table::LiveRooms,
        Table::Locations,
        Table::Media,
    ];

    /// The keyspace name (also the table's label in dumps).
    pub(super) fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Users => "users",
            Table::Handles => "handles",
            Table::Conversations => "conversations",
            Table::Members => "members",
            Table::Memberships => "memberships",
            Table::Stats => "stats",
            Table::Messages => "messages",
            Table::ClientIds => "client_ids",
            Table::Directs => "directs",
            Table::Reads => "reads",
            Table::LastSeen => "last_seen",
            Table::Calls => "calls",
            Table::CallHistory => "call_history",
            Table::LiveCalls => "live_calls",
            Table::LiveRooms => "live_rooms",
            Table::Locations => "locations",
            Table::Media => "media",
        }
    }

    /// How many leading ids a key of this table has; whatever follows them is text.
    fn id_count(self) -> usize {
        match self {
            Table::Meta | Table::Handles => 0,
            Table::Users
            | Table::Conversations
            | Table::Stats
            | Table::LastSeen
            | Table::Calls
            | Table::Media => 1,
            Table::Members
            | Table::Memberships
            | Table::Messages
            | Table::Directs
            | Table::Reads
            | Table::ClientIds
            | Table::CallHistory
            | Table::LiveCalls
            | Table::LiveRooms
            | Table::Locations => 2,
        }
    }

    /// A key in readable form (`12/34`, `12/34/text`), for dumps.
    pub(super) fn describe_key(self, key: &[u8]) -> String {
        let count = self.id_count();
        let mut parts: Vec<String> = (0..count)
            .map(|i| match id_at(key, i * ID_LEN) {
                Some(value) => value.to_string(),
                None => "?".to_owned(),
            })
            .collect();
        let rest = key.get(count * ID_LEN..).unwrap_or_default();
        if !rest.is_empty() || count == 0 {
            parts.push(String::from_utf8_lossy(rest).into_owned());
        }
        parts.join("/")
    }
}

/// The handle key: handles are unique regardless of case.
pub(super) fn handle(handle: &str) -> Vec<u8> {
    crate::store::rules::handle_key(handle).into_bytes()
}

/// The key of a sender's `client_msg_id` within a conversation.
pub(super) fn client_id(conversation: i64, sender: i64, client_msg_id: &str) -> Vec<u8> {
    let mut key = ids(&[conversation, sender]);
    key.extend_from_slice(client_msg_id.as_bytes());
    key
}

/// The key of a direct pair, the same whichever way round the users are given.
pub(super) fn direct(a: i64, b: i64) -> Vec<u8> {
    ids(&[a.min(b), a.max(b)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_ids_sort_numerically_across_the_sign() {
        let values = [i64::MIN, -5, -1, 0, 1, 255, 256, i64::MAX];
        for pair in values.windows(2) {
            assert!(id(pair[0]) < id(pair[1]), "{} should sort before {}", pair[0], pair[1]);
        }
        for value in values {
            assert_eq!(id_at(&id(value), 0), Some(value));
        }
    }

    #[test]
    fn tables_are_listed_in_declaration_order() {
        // `Tables` finds a table's keyspace by its discriminant.
        for (i, table) in Table::ALL.into_iter().enumerate() {
            assert_eq!(table as usize, i, "{table:?}");
        }
    }

    #[test]
    fn keys_read_back_for_dumps() {
        assert_eq!(Table::ClientIds.describe_key(&client_id(7, -2, "c-1")), "7/-2/c-1");
        assert_eq!(Table::Members.describe_key(&ids(&[1, 2])), "1/2");
        assert_eq!(Table::Handles.describe_key(&handle("Ada")), "ada");
        assert_eq!(direct(9, 3), direct(3, 9));
    }
}
