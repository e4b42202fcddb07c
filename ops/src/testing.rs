//! What the commands' tests share: a log written the way nodes write it.

use std::path::Path;
use std::sync::Arc;

use switchboard_ingest::ids::IdGenerator;
use switchboard_ingest::log::Log;
use switchboard_ingest::log::embedded::EmbeddedLog;
use switchboard_ingest::{Ingest, Limits, Origin};
use switchboard_schemas::{ConversationKind, MessageId, MessageSent};

/// What node `node` appends to `log` through.
pub fn ingest(log: &Arc<dyn Log>, node: u16) -> Ingest {
    let limits = Limits { max_body_bytes: 1024, max_group_members: 8 };
    Ingest::new(Arc::clone(log), IdGenerator::new(node).unwrap(), limits)
}

/// A log holding two users, a conversation between them and `messages` messages.
pub async fn written_log(dir: &Path, messages: usize) -> (Arc<dyn Log>, u64) {
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir, 2).unwrap());
    let ingest = ingest(&log, 1);
    let origin = Origin::system("test");
    let (ada, _) = ingest.register_user(&origin, "ada", "Ada", "hash".into()).await.unwrap();
    let (bob, _) = ingest.register_user(&origin, "bob", "Bob", "hash".into()).await.unwrap();
    let (conversation_id, _) = ingest
        .create_conversation(&origin, ConversationKind::Direct, None, vec![ada, bob])
        .await
        .unwrap();
    for i in 0..messages {
        let message = MessageSent {
            conversation_id,
            message_id: MessageId(ingest.next_id()),
            sender: ada,
            client_msg_id: format!("m{i}"),
            body: format!("hello {i}"),
            reply_to: None,
            attachments: Vec::new(),
        };
        ingest.send_message(&Origin::user(ada, "test"), message).await.unwrap();
    }
    (log, 3 + messages as u64)
}
