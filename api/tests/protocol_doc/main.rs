//! `docs/protocol.md` is the contract outside clients are written from. Every HTTP exchange,
//! WebSocket transcript and pushed frame captured in it is replayed here against real servers,
//! in the order that rebuilds the story the document tells (alice, bob, carol and dave at a tea
//! party), and the server must answer as the document says: status, the headers shown, error
//! codes and messages, and bodies with the same fields of the same types (see `compare` for what
//! may differ between two runs).
//!
//! Every request the server takes, every response and every frame of the replay is also held to
//! the schemas of the API descriptions (docs/openapi.json, docs/asyncapi.json).
//!
//! An exchange the replay cannot reproduce is listed in [`story::NOT_REPLAYED`] with the reason;
//! one that is neither replayed nor listed fails the test, so a new example cannot slip by.

#[path = "../common/mod.rs"]
mod common;
mod compare;
#[path = "../descriptions/mod.rs"]
mod descriptions;
mod examples;
mod notes;
mod replay;
mod story;

use std::sync::Arc;

use descriptions::Described;
use examples::{Example, Transcript};
use replay::{Done, World};
use story::{MEDIA, TEA_PARTY, not_replayed};

const DOCUMENT: &str = include_str!("../../../docs/protocol.md");

/// What the document holds.
struct Document {
    examples: Vec<Example>,
    transcripts: Vec<Transcript>,
}

#[tokio::test]
async fn every_captured_exchange_of_the_protocol_document_holds() {
    let document = Document {
        examples: examples::parse(DOCUMENT),
        transcripts: examples::transcripts(DOCUMENT),
    };
    assert!(document.examples.len() > 50, "the document's exchanges were not found");
    assert!(document.transcripts.len() > 5, "the document's transcripts were not found");
    let mut done = Done::default();
    let described = Arc::new(Described::load());
    World::new(described.clone()).run(TEA_PARTY, &document, &mut done).await;
    World::new(described.clone()).run(MEDIA, &document, &mut done).await;

    let exchanges = document.examples.iter().map(|e| (e.line, e.name()));
    let transcripts = document.transcripts.iter().map(|t| (t.line, t.name()));
    let unaccounted: Vec<String> = exchanges
        .chain(transcripts)
        .filter(|(line, name)| !done.replayed.contains(line) && !not_replayed(name))
        .map(|(line, name)| format!("line {line}: {name}"))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "exchanges the replay does not reach (give them a step, or a reason in NOT_REPLAYED):\n{}",
        unaccounted.join("\n")
    );
    assert!(
        done.failures.is_empty(),
        "{} of {} exchanges differ from the document:\n{}",
        done.failures.len(),
        done.replayed.len(),
        done.failures.join("\n")
    );
    // Every exchange replayed was also held to the API descriptions (see `descriptions`).
    assert!(
        described.validated() > 2 * document.examples.len(),
        "only {} requests, responses and frames were held to the API descriptions",
        described.validated()
    );
}
