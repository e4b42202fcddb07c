//! The first start-up check: the cluster lets this client in.
//!
//! librdkafka treats a refused login (a wrong password, an unknown user, a mechanism the broker
//! does not offer) or a failed TLS handshake (a certificate that does not chain to the CA) like a
//! broker that is down: it reconnects and retries, and every request waits until its timeout
//! and then fails as a timeout, saying nothing of the cause. The cause is only reported as a
//! global error, on the client's main queue. So before anything else, this check asks the
//! cluster for metadata in short attempts and looks at those errors between them: a refusal fails
//! the start at once, naming the cause (librdkafka's reasons name the mechanism, never the
//! password).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use super::config::KafkaConfig;
use super::{blocking, kafka_error};
use crate::log::LogError;

/// How long one metadata request may wait before the errors seen so far are looked at.
const ATTEMPT: Duration = Duration::from_millis(250);

/// Fails with [`LogError::Storage`] as soon as the cluster refuses this client's credentials or
/// TLS handshake, with [`LogError::Unavailable`] if it does not answer within the request
/// timeout, and succeeds once it answers. `topic` is the one asked about, so that a cluster with
/// many topics is not asked for all of them.
pub(super) async fn check(config: &KafkaConfig, topic: &str) -> Result<(), LogError> {
    // A producer only because it is the client whose main queue can be polled for errors; it
    // sends nothing.
    let client: BaseProducer<Refusals> = config
        .client_config()
        .create_with_context(Refusals::default())
        .map_err(|e| kafka_error("creating the Kafka client", e))?;
    let topic = topic.to_owned();
    let deadline = Instant::now() + config.request_timeout;
    blocking(move || {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = client.client().fetch_metadata(Some(&topic), ATTEMPT.min(left));
            client.poll(Duration::ZERO);
            if let Some(reason) = client.context().first() {
                return Err(LogError::Storage(format!(
                    "Kafka refused this client (check the credentials and TLS settings of the \
                     kafka:// URL): {reason}"
                )));
            }
            match answer {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(kafka_error("reaching the Kafka cluster", error));
                }
                Err(_) => {}
            }
        }
    })
    .await
}

/// The first refusal librdkafka reported; every other global error is only logged, as the
/// default context does.
#[derive(Default)]
struct Refusals(Mutex<Option<String>>);

impl Refusals {
    fn first(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ClientContext for Refusals {
    fn error(&self, error: KafkaError, reason: &str) {
        let refused = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
        );
        if refused {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason.to_owned());
        } else {
            tracing::warn!(%error, reason, "Kafka client error while connecting");
        }
    }
}

impl ProducerContext for Refusals {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}
