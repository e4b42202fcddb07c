//! What the commands' tests share: a log written the way nodes write it.

use std::path::Path;
use std::sync::Arc;

use switchboard_ingest::ids::IdGenerator;
use switchboard_ingest::log::Log;
use switchboard_ingest::log::embedded::EmbeddedLog;
use switchboard_ingest::{Ingest, Limits, Origin};
use switchboard_schemas::{ConversationId, ConversationKind, MessageId, MessageSent, UserId};

/// What node `node` appends to `log` through.
pub fn ingest(log: &Arc<dyn Log>, node: u16) -> Ingest {
    let limits = Limits { max_body_bytes: 1024, max_group_members: 8 };
    Ingest::new(Arc::clone(log), IdGenerator::new(node).unwrap(), limits)
}

/// A log holding two users, a conversation between them and `messages` messages.
pub async fn written_log(dir: &Path, messages: usize) -> (Arc<dyn Log>, u64) {
    let chat = Chat::written(dir, messages).await;
    (chat.log, chat.events)
}

/// A log with one conversation in it, and the means to say more in it.
pub struct Chat {
    pub log: Arc<dyn Log>,
    /// Events appended so far.
    pub events: u64,
    /// Messages said so far; the n-th has `client_msg_id` `m{n}`.
    messages: usize,
    ingest: Ingest,
    conversation_id: ConversationId,
    sender: UserId,
}

impl Chat {
    /// A log holding two users, ada and bob, a conversation between them and `messages`
    /// messages from ada, `hello 0` onwards.
    pub async fn written(dir: &Path, messages: usize) -> Chat {
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir, 2).unwrap());
        let ingest = ingest(&log, 1);
        let origin = Origin::system("test");
        let (ada, _) = ingest.register_user(&origin, "ada", "Ada", "hash".into()).await.unwrap();
        let (bob, _) = ingest.register_user(&origin, "bob", "Bob", "hash".into()).await.unwrap();
        let (conversation_id, _) = ingest
            .create_conversation(&origin, ConversationKind::Direct, None, vec![ada, bob])
            .await
            .unwrap();
        let mut chat = Chat { log, events: 3, messages: 0, ingest, conversation_id, sender: ada };
        for i in 0..messages {
            chat.say(&format!("hello {i}")).await;
        }
        chat
    }

    /// Appends a message from ada saying `body`.
    pub async fn say(&mut self, body: &str) {
        let message = MessageSent {
            conversation_id: self.conversation_id,
            message_id: MessageId(self.ingest.next_id()),
            sender: self.sender,
            client_msg_id: format!("m{}", self.messages),
            body: body.to_owned(),
            reply_to: None,
            attachments: Vec::new(),
        };
        self.ingest.send_message(&Origin::user(self.sender, "test"), message).await.unwrap();
        self.events += 1;
        self.messages += 1;
    }
}
