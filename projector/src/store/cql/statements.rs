//! Every statement the store runs, prepared once when it connects.
//!
//! Prepared statements are parsed once by the cluster, send only their values afterwards, and
//! let the driver route each request to a replica of its partition. Statements name tables
//! without a keyspace: the session is switched to the store's keyspace before they are prepared.
//!
//! Every statement is marked idempotent, which lets the driver retry one after a timeout: reads
//! are, and every write is an upsert or delete of values computed before it is sent, so running
//! it twice leaves what running it once did.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::error::failed;
use crate::store::StoreError;

/// The columns of a message row, in the order of [`MessageRow`](super::rows::MessageRow).
macro_rules! message_columns {
    () => {
        "conversation_id, bucket, message_id, sender, client_msg_id, body, reply_to, sent_at, \
         edited_at, deleted, seq, attachments"
    };
}

/// The columns of a location row, in the order of [`LocationRow`](super::rows::LocationRow).
macro_rules! location_columns {
    () => {
        "conversation_id, user_id, latitude, longitude, accuracy_m, updated_at, expires_at, \
         stopped, log_offset"
    };
}

/// Declares [`Statements`] and prepares all of them concurrently.
macro_rules! statements {
    ($($(#[$doc:meta])* $name:ident = $cql:expr;)*) => {
        pub(super) struct Statements {
            $($(#[$doc])* pub(super) $name: PreparedStatement,)*
        }

        impl Statements {
            pub(super) async fn prepare(session: &Session) -> Result<Statements, StoreError> {
                let ($($name,)*) = tokio::try_join!($(prepare(session, $cql)),*)?;
                Ok(Statements { $($name),* })
            }
        }
    };
}

statements! {
    user = "SELECT user_id, handle, display_name, created_at, password_hash FROM users \
            WHERE user_id = ?";
    insert_user = "INSERT INTO users (user_id, handle, display_name, created_at, password_hash) \
                   VALUES (?, ?, ?, ?, ?)";
    delete_user = "DELETE FROM users WHERE user_id = ?";

    /// Claimants of a handle, smallest (the holder) first.
    handle_claims = "SELECT user_id FROM handles WHERE handle = ?";
    insert_handle_claim = "INSERT INTO handles (handle, user_id) VALUES (?, ?)";

    conversation = "SELECT conversation_id, kind, title, created_by, created_at \
                    FROM conversations WHERE conversation_id = ?";
    insert_conversation = "INSERT INTO conversations \
                           (conversation_id, kind, title, created_by, created_at) \
                           VALUES (?, ?, ?, ?, ?)";

    members = "SELECT conversation_id, user_id, join_order FROM members \
               WHERE conversation_id = ?";
    member = "SELECT conversation_id, user_id, join_order FROM members \
              WHERE conversation_id = ? AND user_id = ?";
    insert_member = "INSERT INTO members (conversation_id, user_id, join_order) VALUES (?, ?, ?)";
    delete_member = "DELETE FROM members WHERE conversation_id = ? AND user_id = ?";
    inbox = "SELECT conversation_id FROM conversations_by_user WHERE user_id = ?";
    insert_inbox = "INSERT INTO conversations_by_user (user_id, conversation_id) VALUES (?, ?)";
    delete_inbox = "DELETE FROM conversations_by_user WHERE user_id = ? AND conversation_id = ?";

    /// The pair's direct conversation: the one with the smallest id.
    direct_pair = "SELECT conversation_id FROM direct_pairs \
                   WHERE user_low = ? AND user_high = ? LIMIT 1";
    insert_direct_pair = "INSERT INTO direct_pairs (user_low, user_high, conversation_id) \
                          VALUES (?, ?, ?)";

    stats = "SELECT conversation_id, message_count, last_message_id, first_bucket, last_bucket \
             FROM conversation_stats WHERE conversation_id = ?";
    insert_stats = "INSERT INTO conversation_stats \
                    (conversation_id, message_count, last_message_id, first_bucket, last_bucket) \
                    VALUES (?, ?, ?, ?, ?)";

    /// Given messages of one bucket (one partition), by id.
    messages_by_id = concat!(
        "SELECT ", message_columns!(), " FROM messages \
         WHERE conversation_id = ? AND bucket = ? AND message_id IN ?"
    );
    /// Up to a number of messages of one bucket with ids up to a bound, newest first.
    messages_up_to = concat!(
        "SELECT ", message_columns!(), " FROM messages \
         WHERE conversation_id = ? AND bucket = ? AND message_id <= ? LIMIT ?"
    );
    insert_message = concat!(
        "INSERT INTO messages (", message_columns!(), ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    );

    client_msg_id = "SELECT message_id FROM client_msg_ids \
                     WHERE conversation_id = ? AND sender = ? AND client_msg_id = ?";
    insert_client_msg_id = "INSERT INTO client_msg_ids \
                            (conversation_id, sender, client_msg_id, message_id) \
                            VALUES (?, ?, ?, ?)";

    marker = "SELECT conversation_id, user_id, message_id, seq, read_at FROM read_markers \
              WHERE conversation_id = ? AND user_id = ?";
    markers = "SELECT conversation_id, user_id, message_id, seq, read_at FROM read_markers \
               WHERE conversation_id = ?";
    insert_marker = "INSERT INTO read_markers (conversation_id, user_id, message_id, seq, read_at) \
                     VALUES (?, ?, ?, ?, ?)";

    location = concat!(
        "SELECT ", location_columns!(), " FROM locations WHERE conversation_id = ? AND user_id = ?"
    );
    locations = concat!("SELECT ", location_columns!(), " FROM locations WHERE conversation_id = ?");
    insert_location = concat!(
        "INSERT INTO locations (", location_columns!(), ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    );
    media = "SELECT media_id, conversation_id, uploader, content_type, size, file_name, \
             created_at, object_key FROM media WHERE media_id = ?";
    insert_media = "INSERT INTO media (media_id, conversation_id, uploader, content_type, size, \
                    file_name, created_at, object_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";

    last_seen = "SELECT seen_at FROM last_seen WHERE user_id = ?";
    insert_last_seen = "INSERT INTO last_seen (user_id, seen_at) VALUES (?, ?)";

    call = "SELECT record FROM calls WHERE call_id = ?";
    insert_call = "INSERT INTO calls (call_id, state, record) VALUES (?, ?, ?)";
    /// A user's calls, newest first, older than a bound (the largest id for no bound).
    call_history = "SELECT call_id FROM calls_by_user WHERE user_id = ? AND call_id < ? LIMIT ?";
    insert_call_history = "INSERT INTO calls_by_user (user_id, call_id) VALUES (?, ?)";
    live_calls = "SELECT call_id FROM live_calls_by_user WHERE user_id = ?";
    insert_live_call = "INSERT INTO live_calls_by_user (user_id, call_id) VALUES (?, ?)";
    delete_live_call = "DELETE FROM live_calls_by_user WHERE user_id = ? AND call_id = ?";
    live_rooms = "SELECT call_id FROM live_rooms_by_conversation WHERE conversation_id = ?";
    insert_live_room = "INSERT INTO live_rooms_by_conversation (conversation_id, call_id) \
                        VALUES (?, ?)";
    delete_live_room = "DELETE FROM live_rooms_by_conversation \
                        WHERE conversation_id = ? AND call_id = ?";

    checkpoint = "SELECT consumer, topic, log_partition, next_offset FROM checkpoints \
                  WHERE consumer = ?";
    insert_checkpoint = "INSERT INTO checkpoints (consumer, topic, log_partition, next_offset) \
                         VALUES (?, ?, ?, ?)";
}

async fn prepare(session: &Session, cql: &str) -> Result<PreparedStatement, StoreError> {
    let mut statement =
        session.prepare(cql).await.map_err(|e| failed(format_args!("preparing `{cql}`"), e))?;
    statement.set_is_idempotent(true);
    Ok(statement)
}
